"""r1jax.model: DeepSeek-V3 (MLA + DeepSeekMoE + MTP) and dense Qwen2/Llama decoders in Flax NNX.

See docs/contracts.md § Model for the interface other stages code against.
"""

from r1jax.model import config
from r1jax.model.api import (
    abstract_model,
    apply,
    cache_shardings,
    create_sharded,
    logical_axes,
    model_flops_per_token,
    param_counts,
    replicated_params,
    state_shardings,
)
from r1jax.model.config import ModelConfig, RopeScaling, get_variant
from r1jax.model.moe import RouterBias, update_router_bias
from r1jax.model.scan import layer_runs, stack_layers, to_layout, unstack_layers
from r1jax.model.transformer import ModelAux, Transformer

__all__ = [
    "ModelAux", "ModelConfig", "RopeScaling", "RouterBias", "Transformer", "abstract_model", "apply",
    "cache_shardings",
    "config", "create_sharded", "get_variant", "layer_runs", "logical_axes", "model_flops_per_token",
    "param_counts", "replicated_params", "stack_layers", "state_shardings", "to_layout", "unstack_layers",
    "update_router_bias",
]
