"""Executes the notebooks in place with a real Jupyter kernel (nbclient), so their saved outputs are current.

    python notebooks/execute.py                                # every notebook, in order (~3 min, 2-core CPU)
    python notebooks/execute.py 02_grpo_step_by_hand.ipynb     # some of them

Each notebook runs in a fresh kernel started in this folder, on 8 simulated CPU devices, with the checkout's
r1jax first on the path. All of them share one new run folder (R1JAX_NOTEBOOK_RUNS), so 03 reads the base
model 02 pretrained instead of pretraining its own. The saved copy keeps outputs small: stderr streams
(progress bars, warnings) are dropped from it. A cell that raises stops everything and leaves that notebook
unchanged.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEVICES_FLAG = "--xla_force_host_platform_device_count=8"


def kernel_env(runs_dir: str) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = flags if "xla_force_host_platform_device_count" in flags else f"{flags} {DEVICES_FLAG}".strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env["R1JAX_NOTEBOOK_RUNS"] = runs_dir
    return env


def drop_stderr(nb) -> int:
    """Removes stderr stream outputs from every code cell; returns how many were removed."""
    dropped = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
        dropped += len(cell.outputs) - len(kept)
        cell.outputs = kept
    return dropped


def execute(path: str, runs_dir: str, cwd: str = HERE, timeout: int = 900):
    """Runs every cell of the notebook at `path` in a fresh python3 kernel; returns the executed notebook.
    Raises nbclient's CellExecutionError on the first cell that fails."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": cwd}})
    client.execute(env=kernel_env(runs_dir))
    return nb


def main(names: list[str]) -> None:
    names = names or sorted(f for f in os.listdir(HERE) if f.endswith(".ipynb"))
    runs_dir = tempfile.mkdtemp(prefix="r1jax_notebooks_")
    print(f"run folder: {runs_dir}")
    for name in names:
        path = os.path.join(HERE, os.path.basename(name))
        t0 = time.time()
        nb = execute(path, runs_dir)
        dropped = drop_stderr(nb)
        nbformat.write(nb, path)
        print(f"{os.path.basename(path)}: {time.time() - t0:.0f} s, {dropped} stderr outputs dropped")


if __name__ == "__main__":
    main(sys.argv[1:])
