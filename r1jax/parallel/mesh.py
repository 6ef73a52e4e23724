"""Device mesh for r1jax: four named axes, always in this order.

  data    pure data parallelism (replicated weights, split batch; across slices/hosts)
  fsdp    batch split *and* weights split (ZeRO-3 style; gathered per layer by XLA)
  expert  MoE experts split (expert parallelism); acts as a batch axis elsewhere
  tensor  heads / MLP / vocab split (Megatron-style tensor parallelism)

A size of -1 means "whatever is left", so `MeshConfig(fsdp=-1)` is plain FSDP on any host.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "expert", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    """Pure data parallelism: replicated weights, split batch (across slices/hosts); -1 = the rest."""
    fsdp: int = -1
    """Batch split and weights split (ZeRO-3 style); -1 = all the devices the other axes leave."""
    expert: int = 1
    """MoE experts split (expert parallelism); a batch axis elsewhere."""
    tensor: int = 1
    """Heads / MLP / vocabulary split (Megatron-style tensor parallelism)."""
    # Auto (GSPMD propagation) is the default: the shardings of parameters and the few
    # activation constraints in the model drive XLA's partitioner. Explicit (sharding in
    # types) is selectable for experiments; every axis gets the same type.
    axis_type: str = "auto"

    def shape(self, n_devices: int) -> tuple[int, ...]:
        sizes = [self.data, self.fsdp, self.expert, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(AXES, sizes))}")
        known = math.prod(s for s in sizes if s != -1)
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
        if -1 in sizes:
            if n_devices % known:
                raise ValueError(
                    f"mesh: {n_devices} devices are not divisible by the fixed axes "
                    f"{dict(zip(AXES, sizes))} (product {known})"
                )
            sizes[sizes.index(-1)] = n_devices // known
        if math.prod(sizes) != n_devices:
            raise ValueError(
                f"mesh: axes {dict(zip(AXES, sizes))} need {math.prod(sizes)} devices, "
                f"but {n_devices} are available"
            )
        return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """Builds the (data, fsdp, expert, tensor) mesh over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.shape(len(devices))
    axis_type = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}.get(cfg.axis_type)
    if axis_type is None:
        raise ValueError(f"mesh.axis_type must be 'auto' or 'explicit', got {cfg.axis_type!r}")
    try:  # topology-aware device order on real TPU/GPU slices
        from jax.experimental import mesh_utils

        dev_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # simulated CPU devices or odd shapes: plain order is fine
        dev_array = np.asarray(devices).reshape(shape)
    return Mesh(dev_array, AXES, axis_types=(axis_type,) * len(AXES))


def single_device_mesh(device=None) -> Mesh:
    """A 1x1x1x1 mesh: the same code path as a pod, on one device (tests, references)."""
    return make_mesh(MeshConfig(fsdp=1), devices=[device or jax.devices()[0]])
