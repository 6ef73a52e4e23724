"""User-registered reward functions: a plain Python function (item) -> float or (float, status).

    from r1jax.reward import registry

    @registry.register("length_penalty")
    def length_penalty(item):
        return -len(item["completion"]) / 10_000

Then give it a weight per item: {"weights": {"accuracy": 1.0, "length_penalty": 0.1}}. The function runs
inside a reward worker (killed on deadline). A server process only knows functions registered in
modules it imported: start it with `--plugin my_module` (or start_local_server(plugins=[...])).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from r1jax.reward.types import OK, STATUSES, Verdict

RewardFn = Callable[[dict], "float | tuple[float, str]"]
BUILTIN = ("accuracy", "format", "language")
_REGISTRY: dict[str, RewardFn] = {}


def register(name: str, fn: RewardFn | None = None, *, overwrite: bool = False):
    """Registers fn under name; usable as a decorator. Built-in names cannot be replaced."""
    if not isinstance(name, str) or not name:
        raise ValueError("reward name must be a non-empty string")
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in reward; pick another name")

    def deco(f: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not f and not overwrite:
            raise ValueError(f"reward {name!r} already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = f
        return f

    return deco(fn) if fn is not None else deco


def names() -> tuple[str, ...]:
    return BUILTIN + tuple(sorted(_REGISTRY))


def call(name: str, item: dict) -> Verdict:
    """Runs a registered function and checks what it returns (a bad return value is a grader error)."""
    out = _REGISTRY[name](item)
    score, status = out if isinstance(out, tuple) else (out, OK)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise TypeError(f"reward {name!r} returned {score!r}; expected a finite float")
    if status not in STATUSES:
        raise TypeError(f"reward {name!r} returned status {status!r}; expected one of {STATUSES}")
    return Verdict(float(score), status, "")


def known(name: str) -> bool:
    return name in BUILTIN or name in _REGISTRY
