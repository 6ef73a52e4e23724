"""What a researcher watches: metrics to jsonl + TensorBoard, and the paper's plots of a run.

`MetricsWriter` appends one JSON object per step to `<workdir>/metrics.jsonl` (the source of truth:
plots and resume read it) and mirrors scalars to TensorBoard. On resume the writer drops any lines
for steps at or after the restored step, so a run killed between a log line and its checkpoint
continues without gaps or repeated steps.

`start_step` is the first step the (resumed) run will write.

`plot_run(workdir)` draws the views of the R1 paper: accuracy over steps (Figure 2), mean response
length over steps (Figure 3) and the frequency of reflection words in completions (the "aha moment").
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping

import numpy as np

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
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # A run killed mid-write leaves at most one torn last line; anything else is corruption.
                remaining = f.read().strip()
                if remaining:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON") from None
    return rows


def _truncate_from_step(path: str, step: int) -> None:
    """Keeps only rows with row['step'] < step (atomic rewrite)."""
    rows = [r for r in read_jsonl(path) if r.get("step", -1) < step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def tensorboard_name(key: str) -> str:
    """metrics.jsonl keys read as the paper writes them (eval/pass@1); TensorBoard allows only
    [A-Za-z0-9_./-] and warns on the rest, so '@' becomes '_at_' there."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", key.replace("@", "_at_"))


class MetricsWriter:
    """Host-side metrics sink (only process 0 writes)."""

    def __init__(self, workdir: str, *, start_step: int = 0, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.samples_path = os.path.join(workdir, SAMPLES_FILE)
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        for p in (self.path, self.samples_path):
            if os.path.exists(p):
                _truncate_from_step(p, start_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in scalars.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(tensorboard_name(k), v, step)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_samples(self, step: int, samples: list[dict]) -> None:
        if not self.enabled:
            return
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"step": int(step), **s}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts)
    return np.asarray(s), np.asarray(v, dtype=np.float64)


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
    os.makedirs(out_dir, exist_ok=True)
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
        fig.savefig(path)
        paths.append(path)
    return paths
