"""⑥ Checkpoints: orbax, keep-N, atomic, async; restore onto any mesh.

    ckpt = CheckpointManager(directory, keep=3)
    ckpt.save(step, {"policy": ..., "train": ...}, data_state=iterator.get_state())  # returns at once (async)
    step = ckpt.latest_step()                                         # None in an empty directory
    items, data_state = ckpt.restore(step, {"policy": abstract_state(shardings, like=policy)})

A step holds named items (ITEMS): "policy" (what it takes to run the model: params and model state;
a later stage loads only this) and "train" (the rest of a stage's state: optimizer, step, rng, π_ref),
plus "data" (the data iterator's JSON state). `restore` reads only the items it is given.

Atomicity is orbax's: a step is written into `<step>.orbax-checkpoint-tmp-*` and renamed to
`<step>` only after every array and the metadata are on disk, so a crash mid-save leaves the
previous step as the latest; a left-over tmp directory is never listed as a step. On an object
store (a gs:// directory) orbax cannot rename: it writes a `commit_success.txt` into a step last and
lists only steps that have one.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from r1jax import fileio


def abstract_state(shardings, like):
    """A pytree of jax.ShapeDtypeStruct with the target shardings: what `restore` fills in. `like`
    gives shapes and dtypes (a real or eval_shape'd state); `shardings` may come from another mesh."""
    # shardings may be a prefix of `like` (one sharding per nnx.Variable): map the subtree under each
    def under(sharding, subtree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), subtree)

    return jax.tree.map(under, shardings, like)


ITEMS = ("policy", "train")


class CheckpointManager:
    """Saves named pytrees of arrays (ITEMS) and a JSON-able dict (the data iterator's state) per step."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True, create: bool = True):
        if keep < 1:
            raise ValueError(f"CheckpointManager: keep must be >= 1, got {keep}")
        directory = os.fspath(directory)
        # a remote URI stays as it is (abspath would turn gs://b/run into ./gs:/b/run)
        self.directory = directory if fileio.is_remote(directory) else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=create,
            read_only=not create,
            cleanup_tmp_directories=True,
        )
        if not create and not fileio.isdir(self.directory):
            raise FileNotFoundError(f"CheckpointManager: no checkpoint directory {self.directory}")
        self._mgr = ocp.CheckpointManager(epath.Path(self.directory), options=options,
                                          item_names=(*ITEMS, "data"))

    def save(self, step: int, items: dict, data_state: dict | None = None, force: bool = False) -> bool:
        """Starts an (async) save of `step`; the arrays are copied off-device before it returns, so
        the caller may donate or overwrite them right away. False if a step was skipped."""
        data_state = {} if data_state is None else data_state
        unknown = set(items) - set(ITEMS)
        if unknown:
            raise ValueError(f"CheckpointManager.save: unknown items {sorted(unknown)}; items are {ITEMS}")
        if not isinstance(data_state, dict):
            raise TypeError(
                f"CheckpointManager.save: data_state must be a JSON-able dict, got {type(data_state)}"
            )
        args = ocp.args.Composite(data=ocp.args.JsonSave(data_state),
                                  **{name: ocp.args.StandardSave(tree) for name, tree in items.items()})
        return self._mgr.save(int(step), args=args, force=force)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def restore(self, step: int | None, abstract_items: dict):
        """(items, data_state) of `step` (None = latest): the items named in `abstract_items`, laid
        out as it says (shapes, dtypes, shardings: any mesh)."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"CheckpointManager: no checkpoint in {self.directory}")
        if step not in self._mgr.all_steps():
            raise FileNotFoundError(
                f"CheckpointManager: step {step} not in {self.directory} (have {self.all_steps()})"
            )
        args = ocp.args.Composite(data=ocp.args.JsonRestore(),
                                  **{name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()})
        out = self._mgr.restore(step, args=args)
        return {name: out[name] for name in abstract_items}, dict(out.data or {})

    def wait_until_finished(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
