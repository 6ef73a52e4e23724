"""⑥ Checkpoints: orbax, keep-N, atomic, async; restore onto any mesh.

    ckpt = CheckpointManager(directory, keep=3)
    ckpt.save(step, train_state, data_state=iterator.get_state())   # returns at once (async)
    step = ckpt.latest_step()                                         # None in an empty directory
    state, data_state = ckpt.restore(step, abstract_state(state_shardings, like=state))

Atomicity is orbax's: a step is written into `<step>.orbax-checkpoint-tmp-*` and renamed to
`<step>` only after every array and the metadata are on disk, so a crash mid-save leaves the
previous step as the latest; a left-over tmp directory is never listed as a step.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def abstract_state(shardings, like):
    """A pytree of jax.ShapeDtypeStruct with the target shardings: what `restore` fills in. `like`
    gives shapes and dtypes (a real or eval_shape'd state); `shardings` may come from another mesh."""
    # shardings may be a prefix of `like` (one sharding per nnx.Variable): map the subtree under each
    def under(sharding, subtree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), subtree)

    return jax.tree.map(under, shardings, like)


class CheckpointManager:
    """Saves (train_state, data_state) per step; `train_state` is any pytree of arrays (TrainState),
    `data_state` a JSON-able dict (the data iterator's state)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"CheckpointManager: keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def save(self, step: int, train_state, data_state: dict | None = None, force: bool = False) -> bool:
        """Starts an (async) save of `step`; the arrays are copied off-device before it returns, so
        the caller may donate or overwrite train_state right away. False if a step was skipped."""
        data_state = {} if data_state is None else data_state
        if not isinstance(data_state, dict):
            raise TypeError(
                f"CheckpointManager.save: data_state must be a JSON-able dict, got {type(data_state)}"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(train_state), data=ocp.args.JsonSave(data_state)
        )
        return self._mgr.save(int(step), args=args, force=force)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def restore(self, step: int | None, abstract_train_state):
        """(train_state, data_state) of `step` (None = latest), laid out as `abstract_train_state`
        says (shapes, dtypes, shardings: any mesh)."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"CheckpointManager: no checkpoint in {self.directory}")
        if step not in self._mgr.all_steps():
            raise FileNotFoundError(
                f"CheckpointManager: step {step} not in {self.directory} (have {self.all_steps()})"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_train_state), data=ocp.args.JsonRestore()
        )
        out = self._mgr.restore(step, args=args)
        return out.state, dict(out.data or {})

    def wait_until_finished(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
