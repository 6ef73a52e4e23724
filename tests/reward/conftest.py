"""One real reward server process shared by the reward tests (module scope would restart it per file)."""

import os

import pytest

from r1jax.reward import RewardClient, start_local_server

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "r1jax-test-secret-4711"
# small limits keep the adversarial tests fast; the defaults are cpu 5 s / wall 10 s
SERVER_ARGS = ("--cpu-s", "2", "--wall-s", "4", "--math-deadline", "4", "--memory-mb", "512")


def server_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env["R1JAX_TEST_SECRET"] = SECRET  # a sandboxed program must not be able to read this
    return env


@pytest.fixture(scope="session")
def server_url():
    with start_local_server(
        workers=3, extra_args=SERVER_ARGS, plugins=("reward_plugin",), env=server_env()
    ) as url:
        yield url


@pytest.fixture(scope="session")
def client(server_url):
    return RewardClient([server_url], timeout_s=120)
