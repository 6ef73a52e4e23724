"""Compilation: JAX's persistent compilation cache, and a count of what the process compiled.

    compilation.setup(CompileSpec())       # once per process, before the first jit runs (r1jax/main.py)
    ...                                    # every stage
    compilation.totals()                   # {"compiles": N, "compile_s": X, "cache_hits": M, ...}

The cache is on by default, in `$XDG_CACHE_HOME/r1jax/jax` (else `~/.cache/r1jax/jax`), with the
thresholds at zero so that the many small CPU programs of the tiny runs are cached too (JAX's default
keeps only programs that took over a second to compile). A second run of the same config then loads
every executable from disk instead of compiling it. Where the cache lives, in order: the config field
`compile.cache_dir`, the environment variable R1JAX_COMPILE_CACHE (`off` disables it), JAX's own
JAX_COMPILATION_CACHE_DIR, then the default. `--config.compile.cache=False` disables it too.

The count comes from `jax.monitoring`: every program that reaches the XLA backend records a
`backend_compile_duration` event; the ones the persistent cache answered record a `cache_hits` event
just before it, on the same thread. So `compiles` are real XLA compilations and `cache_hits` are
executables loaded from the cache; tracing and lowering to StableHLO still run in every process and are
counted apart (`trace_s`, `lower_s`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"
CACHE_WRITE = "/jax/compilation_cache/cache_misses"  # recorded when a compiled executable is written
ENV_VAR = "R1JAX_COMPILE_CACHE"
OFF = ("0", "off", "false", "no", "none")


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    """The `compile` section: JAX's persistent compilation cache."""

    cache: bool = True
    """Keep compiled programs on disk, so a second run of the same config compiles nothing."""
    cache_dir: str = ""
    """Where; '' = $R1JAX_COMPILE_CACHE, else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/r1jax/jax."""
    min_compile_time_s: float = 0.0
    """Cache only programs whose compilation took at least this long (0 = every program, CPU ones too)."""

    def __post_init__(self):
        if self.min_compile_time_s < 0:
            raise ValueError(f"min_compile_time_s must be >= 0, got {self.min_compile_time_s}")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "r1jax", "jax")


def cache_dir_of(spec: CompileSpec) -> str | None:
    """The cache directory this spec asks for, or None when the cache is off."""
    if not spec.cache:
        return None
    if spec.cache_dir:
        return None if spec.cache_dir.lower() in OFF else os.path.abspath(os.path.expanduser(spec.cache_dir))
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return None if env.strip().lower() in OFF else os.path.abspath(os.path.expanduser(env.strip()))
    jax_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return os.path.abspath(jax_env) if jax_env else default_cache_dir()


def setup(spec: CompileSpec) -> str | None:
    """Turns the persistent cache on (or off) as the spec says and starts counting; returns the cache
    directory, None when off. Call before the first compilation of the process; calling again with
    another directory moves the cache there (tests run several stages in one process)."""
    import jax

    path = cache_dir_of(spec)
    _listen()
    if path is not None:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)  # the cache is trusted code: the user's own
        except OSError as e:  # a read-only home, say: run without the cache rather than not at all
            warnings.warn(f"persistent compilation cache off: cannot create {path}: {e}", stacklevel=2)
            path = None
    values = jax.config.values
    current = values.get("jax_compilation_cache_dir") if values.get("jax_enable_compilation_cache", True) else None
    if (path or None) != (current or None):
        _reset_jax_cache()  # JAX decides once per process whether and where to cache; start that over
    jax.config.update("jax_enable_compilation_cache", path is not None)
    jax.config.update("jax_compilation_cache_dir", path)
    if path is not None:
        for name, value in (("jax_persistent_cache_min_compile_time_secs", float(spec.min_compile_time_s)),
                            ("jax_persistent_cache_min_entry_size_bytes", -1)):  # -1: no size floor, no override
            try:
                jax.config.update(name, value)
            except AttributeError:  # a JAX without this threshold: its default applies
                pass
    _COUNTS.cache_dir = path
    return path


def _reset_jax_cache() -> None:
    try:
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    except Exception:  # noqa: BLE001 - an older/newer JAX without it: the config update alone applies
        pass


# ── counting ────────────────────────────────────────────────────────────────────────────────────


class _Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.local = threading.local()  # a cache hit marks its thread; the compile event right after reads it
        self.values = dict(compiles=0, compile_s=0.0, cache_hits=0, cache_load_s=0.0, cache_writes=0,
                           trace_s=0.0, lower_s=0.0)
        self.cache_dir: str | None = None

    def on_event(self, event: str, **_) -> None:
        if event == CACHE_HIT:
            self.local.hit = True
        elif event == CACHE_WRITE:
            with self.lock:
                self.values["cache_writes"] += 1

    def on_duration(self, event: str, duration: float, **_) -> None:
        if event == BACKEND_COMPILE:
            hit, self.local.hit = getattr(self.local, "hit", False), False
            with self.lock:
                if hit:
                    self.values["cache_hits"] += 1
                    self.values["cache_load_s"] += duration
                else:
                    self.values["compiles"] += 1
                    self.values["compile_s"] += duration
        elif event in (TRACE, LOWER):
            with self.lock:
                self.values["trace_s" if event == TRACE else "lower_s"] += duration


_COUNTS = _Counts()
_LISTENING = False


def _listen() -> None:
    global _LISTENING
    if _LISTENING:
        return
    from jax import monitoring

    monitoring.register_event_listener(_COUNTS.on_event)
    monitoring.register_event_duration_secs_listener(_COUNTS.on_duration)
    _LISTENING = True


def totals() -> dict:
    """What this process compiled since setup(): compiles and their seconds (XLA backend), executables
    loaded from the persistent cache and the seconds that took, entries written, tracing and lowering
    seconds, and the cache directory (None = off)."""
    with _COUNTS.lock:
        out = dict(_COUNTS.values)
    return {**{k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, "cache_dir": _COUNTS.cache_dir}


def since(before: dict) -> dict:
    """totals() minus an earlier totals()."""
    now = totals()
    return {k: (round(v - before.get(k, 0), 3) if isinstance(v, float) else v - before.get(k, 0))
            if isinstance(v, (int, float)) else v for k, v in now.items()}


def summary_line(t: dict) -> str:
    """'compiles: 41 (23.5 s), persistent cache hits: 0 (written 41; ~/.cache/r1jax/jax)'."""
    where = "off" if t.get("cache_dir") is None else _short(t["cache_dir"])
    return (f"compiles: {t['compiles']} ({t['compile_s']:.1f} s), persistent cache hits: {t['cache_hits']} "
            f"({t['cache_load_s']:.1f} s to load; {t['cache_writes']} written; cache {where}); "
            f"tracing + lowering {t['trace_s'] + t['lower_s']:.1f} s")


def _short(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home != "/" and path.startswith(home + os.sep) else path
