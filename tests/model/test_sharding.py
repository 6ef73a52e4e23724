"""On 8 CPU devices with a (data=2, fsdp=2, expert=2) mesh: parameters are born sharded, every large
parameter is really split, and the sharded forward (expert-parallel MoE) equals one device's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import r1jax.model as M
from r1jax.model.moe import moe_expert_parallel, moe_ragged, route
from r1jax.parallel.mesh import MeshConfig, make_mesh, single_device_mesh

# one dense + one MoE layer keeps the 8-device compiles short; MTP adds nothing sharding-specific
CFG = dataclasses.replace(M.get_variant("tiny_moe"), init_std=0.2, n_layers=2, n_mtp=0)
LARGE = 256  # elements; norms and router biases are smaller and stay replicated


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 8, "tests/conftest.py should give 8 simulated CPU devices"
    return make_mesh(MeshConfig(data=2, fsdp=2, expert=2, tensor=1))


@pytest.fixture(scope="module")
def sharded(mesh):
    return M.create_sharded(CFG, mesh, rng_seed=7)


def test_every_large_parameter_is_sharded(sharded):
    _, state = sharded
    n_large = 0
    for path, v in nnx.to_flat_state(state):
        arr = v[...]
        if isinstance(v, nnx.Param) and arr.size >= LARGE:
            n_large += 1
            assert not arr.sharding.is_fully_replicated, f"{path} {arr.shape} is replicated"
            local = arr.addressable_shards[0].data
            assert local.size < arr.size, f"{path}: a device holds the full {arr.shape}"
    assert n_large > 12
    assert M.replicated_params(state, min_size=LARGE) == []
    # the guardrail does flag a replicated large parameter
    w = state["layers"][1]["mlp"]["w_gate"][...]
    replicated = jax.device_put(w, NamedSharding(w.sharding.mesh, P()))
    flat = [(p, v.replace(replicated) if p[-1] == "w_gate" and p[1] == 1 else v)
            for p, v in nnx.to_flat_state(state)]
    assert M.replicated_params(nnx.from_flat_state(flat), min_size=LARGE) == ["layers/1/mlp/w_gate"]
    experts = state["layers"][1]["mlp"]["w_gate"][...]
    assert experts.sharding.spec[0] == "expert"


def test_sharded_forward_equals_single_device(mesh, sharded):
    graphdef, state = sharded
    # the same seed gives the same values on any mesh; this single-device state is the reference
    _, single = M.create_sharded(CFG, single_device_mesh(), rng_seed=7)
    for (path, x), (_, y) in zip(nnx.to_flat_state(state), nnx.to_flat_state(single)):
        np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))
    b, t = 8, 8
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (b, t)))
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))

    def forward(state, tokens, positions):
        hidden, _, aux = M.apply(graphdef, state, tokens, positions)
        return nnx.merge(graphdef, state).logits(hidden), aux

    ref_logits, ref_aux = jax.jit(forward)(single, tokens, positions)  # one device, no mesh set

    batch = NamedSharding(mesh, P(("data", "fsdp", "expert")))
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(forward)(state, tokens, positions))  # expert-parallel path
        logits, aux = jax.jit(forward)(state, jax.device_put(tokens, batch), jax.device_put(positions, batch))
    assert logits.sharding.spec[0] is not None  # the batch stayed split
    scale = float(np.abs(ref_logits).max())
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(aux.expert_load_le), np.asarray(ref_aux.expert_load_le), atol=1e-6)


@pytest.mark.parametrize("n_tokens", [16, 6])  # 6: not a multiple of the 8 batch shards (padded)
def test_expert_parallel_dispatch_equals_local(mesh, n_tokens):
    rs = np.random.RandomState(n_tokens)
    e, d, f = CFG.n_routed_experts, CFG.d_model, CFG.moe_mlp_dim
    x = jnp.asarray(rs.randn(n_tokens, d).astype(np.float32))
    w = jnp.asarray(rs.randn(d, e).astype(np.float32))
    wg, wu = (jnp.asarray(rs.randn(e, d, f).astype(np.float32) * 0.2) for _ in range(2))
    wd = jnp.asarray(rs.randn(e, f, d).astype(np.float32) * 0.2)
    w_nk, idx_nk, _ = route(x, w, jnp.zeros((e,)), CFG)
    probe = jnp.asarray(rs.randn(n_tokens, d).astype(np.float32))

    def loss(dispatch, x, w_nk, wg, wu, wd):  # a scalar of the output, to compare gradients too
        y = dispatch(x, idx_nk, w_nk, wg, wu, wd)
        return jnp.sum(y * probe), y

    grad = lambda dispatch: jax.value_and_grad(lambda *a: loss(dispatch, *a), argnums=(0, 1, 2, 3, 4),
                                               has_aux=True)
    (_, ref), ref_grads = jax.jit(grad(moe_ragged))(x, w_nk, wg, wu, wd)
    with jax.set_mesh(mesh):
        ep = lambda *a: moe_expert_parallel(*a, mesh=jax.sharding.get_abstract_mesh())
        (_, got), got_grads = jax.jit(grad(ep))(x, w_nk, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5 * np.abs(ref).max())
    for name, g_ep, g_ref in zip(("x", "gates", "w_gate", "w_up", "w_down"), got_grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g_ep), np.asarray(g_ref), atol=1e-5 * np.abs(g_ref).max(),
                                   err_msg=f"gradient wrt {name}")


def test_logical_axes_and_cache_shardings(mesh, sharded):
    graphdef, state = sharded
    axes = M.logical_axes(state)
    assert axes["layers"][1]["mlp"]["w_down"] == ("exp", "mlp", "embed")
    assert axes["layers"][1]["self_attn"]["kv_b_proj"]["kernel"] == ("latent", "heads")
    assert axes["layers"][1]["mlp"]["gate"]["e_score_correction_bias"] is None  # state, replicated
    cache = jax.eval_shape(lambda: nnx.merge(graphdef, state).init_cache(8, 16))
    specs = M.cache_shardings(cache, mesh)
    assert specs[0]["c_kv"].spec == P(("data", "fsdp", "expert"), None, None)
    # a batch the batch axes cannot split stays replicated instead of failing
    cache1 = jax.eval_shape(lambda: nnx.merge(graphdef, state).init_cache(1, 16))
    assert M.cache_shardings(cache1, mesh)[0]["k_rope"].spec == P(None, None, None)
