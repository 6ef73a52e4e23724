"""The notebooks run: each one is executed by nbclient in a fresh Jupyter kernel (a copy in a temporary folder;
the repository's files are not touched), on 8 simulated CPU devices, and any cell that raises fails the test.

The notebooks share one run folder (R1JAX_NOTEBOOK_RUNS), as `notebooks/execute.py` runs them: run in order,
03 reads the base model 02 pretrained; run alone, 03 pretrains its own.
"""

import os
import shutil

import pytest

nbformat = pytest.importorskip("nbformat")  # nbclient, ipykernel: the "test" extra
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("notebook_runs"))


def _kernel_env(runs_dir: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)  # this checkout's r1jax
    env["R1JAX_NOTEBOOK_RUNS"] = runs_dir
    return env


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_in_a_fresh_kernel(name, tmp_path, runs_dir):
    path = tmp_path / name
    shutil.copy(os.path.join(NOTEBOOK_DIR, name), path)
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "pip install -e .[notebooks]" in nb.cells[0].source
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    flag = first_code.find("xla_force_host_platform_device_count=8")
    imports = [i for i in map(first_code.find, ("import jax", "from jax", "import r1jax", "from r1jax")) if i >= 0]
    assert imports and 0 <= flag < min(imports), "the first code cell sets the 8-device flag before importing jax"

    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env=_kernel_env(runs_dir))
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{name}: a cell raised:\n{str(e)[-4000:]}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
