"""A real reward server process for the eval tests (the harness grades through it, as in training)."""

import pytest

from r1jax.reward import RewardClient, start_local_server

MATH_DEADLINE_S = 4.0
SERVER_ARGS = ("--cpu-s", "2", "--wall-s", "4", "--math-deadline", str(MATH_DEADLINE_S), "--memory-mb", "512")


@pytest.fixture(scope="session")
def eval_client():
    with start_local_server(workers=2, extra_args=SERVER_ARGS) as url:
        yield RewardClient([url], timeout_s=120)
