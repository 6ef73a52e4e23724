"""What a researcher watches: metrics to jsonl + TensorBoard, and the paper's plots of a run.

`MetricsWriter` appends one JSON object per step to `<workdir>/metrics.jsonl` (the source of truth:
plots and resume read it) and mirrors scalars to TensorBoard. On resume the writer drops any lines
for steps at or after the restored step, so a run killed between a log line and its checkpoint
continues without gaps or repeated steps.

`start_step` is the first step the (resumed) run will write.

A remote workdir (gs://bucket/run: an object store, which cannot append) keeps the rows in memory
and writes each file whole, in one atomic put, at most every `flush_every_s` seconds, on `flush()`
and on `close()`; the session flushes when it saves a checkpoint, so every step a checkpoint covers
is in the object (a crash loses only rows that resume would drop anyway). TensorBoard events are
written locally there and uploaded whole to `<workdir>/tb` at the same moments.

`plot_run(workdir)` draws the views of the R1 paper: accuracy over steps (Figure 2), mean response
length over steps (Figure 3) and the frequency of reflection words in completions (the "aha moment").
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping

import numpy as np

from r1jax import fileio

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"

# Reflection phrases counted as the "aha moment" signal (paper §2.2.4, Table 3).
REFLECTION_PATTERNS = (
    r"\bwait\b",
    r"\blet me check\b",
    r"\blet me verify\b",
    r"\bverify\b",
    r"\bcheck again\b",
    r"\bre-?evaluate\b",
    r"\bre-?check\b",
    r"\bhmm\b",
    r"\bmistake\b",
)
_REFLECTION_RE = re.compile("|".join(REFLECTION_PATTERNS), re.IGNORECASE)


def reflection_rate(texts: Iterable[str]) -> float:
    """Fraction of completions containing at least one reflection phrase."""
    texts = list(texts)
    if not texts:
        return 0.0
    return sum(bool(_REFLECTION_RE.search(t)) for t in texts) / len(texts)


def read_jsonl(path: str) -> list[dict]:
    """Rows of a metrics or samples file (local or remote); a torn last line is dropped."""
    return fileio.read_jsonl(path)


def tensorboard_name(key: str) -> str:
    """metrics.jsonl keys read as the paper writes them (eval/pass@1); TensorBoard allows only
    [A-Za-z0-9_./-] and warns on the rest, so '@' becomes '_at_' there."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", key.replace("@", "_at_"))


class MetricsWriter:
    """Host-side metrics sink (only process 0 writes)."""

    def __init__(self, workdir: str, *, start_step: int = 0, enabled: bool = True, tensorboard: bool = True,
                 flush_every_s: float = 30.0):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.samples_path = os.path.join(workdir, SAMPLES_FILE)
        self.remote = fileio.is_remote(workdir)
        self.flush_every_s = flush_every_s
        self._tb = None
        self._rows: dict[str, list[dict]] = {}  # remote: each file's rows, written whole by flush()
        self._dirty: set[str] = set()
        self._last_flush = time.monotonic()
        if not enabled:
            return
        fileio.makedirs(workdir)
        for p in (self.path, self.samples_path):
            # resume: keep only rows of steps before start_step (written back at once, atomically)
            rows = read_jsonl(p)
            kept = [r for r in rows if r.get("step", -1) < start_step]
            if self.remote:  # objects are written whole: never a torn line
                self._rows[p] = kept
                if len(kept) != len(rows):
                    fileio.write_jsonl(p, kept)
            elif fileio.exists(p):  # also drops a torn last line, which an append would glue onto
                fileio.write_jsonl(p, kept)
        if tensorboard:
            self._tb = _TensorBoard(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in scalars.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(tensorboard_name(k), v, step)
        self._add(self.path, [row])

    def write_samples(self, step: int, samples: list[dict]) -> None:
        if not self.enabled:
            return
        self._add(self.samples_path, [{"step": int(step), **s} for s in samples])

    def _add(self, path: str, rows: list[dict]) -> None:
        if not self.remote:
            fileio.append_jsonl(path, rows)
            return
        self._rows[path].extend(rows)
        self._dirty.add(path)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Remote: writes each changed file whole (one put); locally rows are on disk already."""
        for path in sorted(self._dirty):
            fileio.write_jsonl(path, self._rows[path])
        self._dirty.clear()
        self._last_flush = time.monotonic()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class _TensorBoard:
    """tensorboardX events for `logdir`. A remote logdir: events go to a local temporary directory and
    each events file is uploaded whole (one put) on flush() and close(), the object-store way (no
    append) for any scheme fileio writes, without a cloud client library."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self.remote = logdir if fileio.is_remote(logdir) else None
        self.local = tempfile.mkdtemp(prefix="r1jax-tb-") if self.remote else logdir
        self.writer = SummaryWriter(self.local)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def _upload(self) -> None:
        if self.remote:
            for name in sorted(os.listdir(self.local)):
                with open(os.path.join(self.local, name), "rb") as f:
                    fileio.write_atomic(os.path.join(self.remote, name), f.read())


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts)
    return np.asarray(s), np.asarray(v, dtype=np.float64)


def save_figure(fig, path: str) -> None:
    """A matplotlib figure as a PNG at `path` (local or remote), written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fileio.write_atomic(path, buf.getvalue())


def plot_run(workdir: str, out_dir: str | None = None) -> list[str]:
    """Writes accuracy.png (Fig. 2), response_length.png (Fig. 3), reflection.png; returns paths.
    Draws on its own Agg canvases: the process's matplotlib backend (a notebook's inline one) is left
    as it is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_jsonl(os.path.join(workdir, METRICS_FILE))
    if not rows:
        raise FileNotFoundError(f"{os.path.join(workdir, METRICS_FILE)} has no metrics to plot")
    out_dir = out_dir or os.path.join(workdir, "plots")
    fileio.makedirs(out_dir)
    views = [
        ("accuracy.png", "Accuracy during training (paper Fig. 2)", "accuracy",
         [("eval/pass@1", "held-out pass@1"), ("eval/cons@k", "held-out cons@k"),
          ("reward/accuracy", "train accuracy reward"), ("reward/format", "train format reward")]),
        ("response_length.png", "Average response length (paper Fig. 3)", "tokens",
         [("rollout/length_mean", "mean"), ("rollout/length_max", "max")]),
        ("reflection.png", "Reflection words in completions (aha moment)", "fraction of completions",
         [("rollout/reflection_rate", "contains wait / verify / check ...")]),
    ]
    paths = []
    for fname, title, ylabel, keys in views:
        fig = Figure(figsize=(5.5, 3.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        drawn = 0
        for key, label in keys:
            s, v = _series(rows, key)
            if len(s):
                ax.plot(s, v, marker="o" if len(s) < 30 else None, markersize=3, label=label)
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)  # rates and lengths: an axis below zero only misleads
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        save_figure(fig, path)
        paths.append(path)
    return paths
