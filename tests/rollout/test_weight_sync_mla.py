"""Weight sync between meshes (8 simulated devices) and the MLA-cache model (tiny_moe)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.model import Transformer, create_sharded, get_variant, state_shardings
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.rollout import FINISH_LENGTH, SamplingParams, generate
from r1jax.rollout.weight_sync import reshard


def _leaves(state):
    return jax.tree.leaves(state)


def test_reshard_train_fsdp8_to_sampler_meshes_device_to_device():
    cfg = get_variant("tiny_dense")
    train_mesh = make_mesh(MeshConfig(fsdp=8))
    _, state = create_sharded(cfg, train_mesh, 0)
    reference = [np.asarray(x) for x in _leaves(state)]
    targets = [
        make_mesh(MeshConfig(data=2, fsdp=1, tensor=4)),  # same devices, tensor-parallel layout
        make_mesh(MeshConfig(fsdp=1, tensor=4), devices=jax.devices()[4:]),  # separate sampler devices
    ]
    for mesh in targets:
        # no host round trip: a gather through the host would trip these guards
        with jax.transfer_guard_device_to_host("disallow"), jax.transfer_guard_host_to_device("disallow"):
            out = reshard(state, mesh)
            jax.block_until_ready(out)
        want = state_shardings(state, mesh)
        sharded = 0
        for x, ref, sh in zip(_leaves(out), reference, jax.tree.leaves(want)):
            assert x.sharding == sh
            assert set(x.sharding.device_set) == set(mesh.devices.flat)
            for shard in x.addressable_shards:  # every device holds only its block
                assert shard.data.shape == sh.shard_shape(x.shape)
            sharded += not sh.is_fully_replicated
            np.testing.assert_array_equal(np.asarray(x), ref)
        assert sharded > 0
    # a bfloat16 copy for the sampler; the float32 masters stay untouched
    half = reshard(state, targets[0], dtype=jnp.bfloat16)
    for x, ref in zip(_leaves(half), reference):
        assert x.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(x), ref.astype(jnp.bfloat16))
    assert all(x.dtype == np.float32 for x in _leaves(state))


def test_mla_cache_model_greedy_equals_full_forward():
    cfg = get_variant("tiny_moe")
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    prompts = np.array([[3, 4, 5, 6], [7, 8, 0, 0]])
    lens = np.array([4, 2])
    max_new = 6
    sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new, n=1)
    r = jax.device_get(generate(graphdef, state, prompts, lens, sampling, jax.random.key(0)))
    np.testing.assert_array_equal(r.finish_reason_b, FINISH_LENGTH)

    @jax.jit
    def full_logits(tokens_bl):
        model = nnx.merge(graphdef, state)
        positions = jnp.broadcast_to(jnp.arange(tokens_bl.shape[1]), tokens_bl.shape)
        return model.logits(model(tokens_bl, positions)[0])

    ref = np.zeros_like(r.tokens_bl)
    for row in range(2):
        ref[row, : lens[row]] = prompts[row, : lens[row]]
    for k in range(max_new):
        logits = np.asarray(full_logits(jnp.asarray(ref)))
        for row in range(2):
            ref[row, lens[row] + k] = np.argmax(logits[row, lens[row] + k - 1])
    np.testing.assert_array_equal(r.tokens_bl, ref)
    logits = np.asarray(full_logits(jnp.asarray(r.tokens_bl)))
    logp = jax.nn.log_softmax(logits, -1)
    for row in range(2):
        for t in range(lens[row], lens[row] + max_new):
            want = logp[row, t - 1, r.tokens_bl[row, t]]
            np.testing.assert_allclose(r.logp_policy_bl[row, t], want, atol=1e-4)


def test_cast_onto_the_same_mesh_leaves_the_callers_arrays_alive():
    """reshard(state, its own mesh, dtype=bf16): device_put is a no-op there, so the cast must not
    donate the caller's buffers."""
    import dataclasses as dc

    import jax
    import jax.numpy as jnp
    import numpy as np

    from r1jax.model import create_sharded, get_variant
    from r1jax.parallel.mesh import MeshConfig, make_mesh
    from r1jax.rollout import reshard

    mesh = make_mesh(MeshConfig(fsdp=-1))
    _, state = create_sharded(dc.replace(get_variant("tiny_dense"), vocab_size=64), mesh, 0)
    before = [np.asarray(x) for x in jax.tree.leaves(state)]
    cast = reshard(state, mesh, dtype=jnp.bfloat16)
    after = [np.asarray(x) for x in jax.tree.leaves(state)]  # raises if the buffers were donated
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(cast) if jnp.issubdtype(x.dtype, jnp.floating))
