"""A user reward registered the documented way; the test server imports it with --plugin."""

from r1jax.reward import registry


@registry.register("short")
def short(item):
    """1 for completions under 50 characters, with a status the server must pass through."""
    return (1.0, "ok") if len(item["completion"]) < 50 else (0.0, "wrong")


@registry.register("broken_user_reward")
def broken(item):
    raise RuntimeError("a bug in a user reward")
