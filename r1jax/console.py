"""What a run tells the person who started it: one line per event, a label and the news.

    console.say("eval @20", "pass@1 0.828  cons@4 0.859  format 1.00")

Lines go to stdout from process 0 only, through tqdm so they never glue onto a progress bar. The
library's logging (absl INFO) stays available with `--verbose`; these lines are the story of a run:
where it writes, what it starts from, what it measured, where the results are.
"""

from __future__ import annotations

import sys

LABEL_WIDTH = 10


def _is_main() -> bool:
    try:
        import jax

        return jax.process_index() == 0
    except Exception:  # noqa: BLE001 - before jax is usable the caller is the only process
        return True


def say(label: str, text: str = "") -> None:
    """One line: the label padded to a column, then the text (continuation lines indented under it)."""
    if not _is_main():
        return
    from tqdm import tqdm

    lines = str(text).splitlines() or [""]
    pad = " " * (LABEL_WIDTH + 1)
    out = [f"{label:<{LABEL_WIDTH}} {lines[0]}".rstrip()] + [pad + line for line in lines[1:]]
    tqdm.write("\n".join(out), file=sys.stdout)
    sys.stdout.flush()


def progress(iterable, desc: str, **kwargs):
    """A tqdm progress bar on process 0; TQDM_DISABLE=1 in the environment turns it off (notebooks, logs)."""
    import os

    from tqdm import tqdm

    disable = not _is_main() or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(iterable, desc=desc, disable=disable, **kwargs)


def duration(seconds: float) -> str:
    """'48 s', '4 min 12 s', '1 h 05 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.1f}B"
