"""Per-token log-probs and entropies without the full [B, T, V] float32 logits (every stage's loss).

The sequence is cut into chunks of `chunk` positions; each chunk's logits [B, chunk, V] are made,
reduced to (log p(target), entropy) and dropped. `jax.checkpoint` on the chunk body makes the
backward pass recompute a chunk's logits instead of storing all of them, so peak memory is one chunk
of logits in both directions (vocabularies of real models are 100k+; 16 x 8k x 152k x 4 B = 80 GB).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from r1jax.parallel.rules import DEFAULT_RULES, Rules
from r1jax.trainer.state import batch_sharding


def _chunk_stats(h_bcd, w_dv, tgt_bc):
    logits_bcv = jnp.einsum("bcd,dv->bcv", h_bcd, w_dv, preferred_element_type=jnp.float32)
    lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
    tgt_logit_bc = jnp.take_along_axis(logits_bcv, tgt_bc[..., None], axis=-1)[..., 0]
    p_bcv = jnp.exp(logits_bcv - lse_bc[..., None])
    entropy_bc = lse_bc - jnp.sum(p_bcv * logits_bcv, axis=-1)
    return tgt_logit_bc - lse_bc, entropy_bc


def token_logprobs_and_entropy(hidden_btd, w_dv, targets_bt, chunk: int):
    """(logp_bt, entropy_bt), float32: log p(targets[b, t] | hidden[b, t]) and the entropy of that
    next-token distribution. Differentiable in hidden_btd and w_dv (entropy too, though callers
    use it as a metric)."""
    b, t, d = hidden_btd.shape
    if targets_bt.shape != (b, t):
        raise ValueError(f"token_logprobs: targets_bt shape {targets_bt.shape} != hidden_btd[:2] {(b, t)}")
    if w_dv.shape[0] != d:
        raise ValueError(f"token_logprobs: w_dv shape {w_dv.shape} does not match d_model {d}")
    chunk = max(1, min(chunk, t))
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0)))
    tg = jnp.pad(targets_bt.astype(jnp.int32), ((0, 0), (0, pad)))
    h_nbcd = h.reshape(b, n, chunk, d).swapaxes(0, 1)
    tg_nbc = tg.reshape(b, n, chunk).swapaxes(0, 1)
    body = jax.checkpoint(lambda xs: _chunk_stats(xs[0], w_dv, xs[1]))
    logp_nbc, ent_nbc = jax.lax.map(body, (h_nbcd, tg_nbc))
    unchunk = lambda x_nbc: x_nbc.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    return unchunk(logp_nbc), unchunk(ent_nbc)


def token_logprobs(hidden_btd, w_dv, targets_bt, chunk: int):
    """logp_bt = log p(targets[b, t] | hidden[b, t]), float32 (docs/contracts.md § GRPO)."""
    return token_logprobs_and_entropy(hidden_btd, w_dv, targets_bt, chunk)[0]


def shift_to_sequence(x_bt):
    """Position t of the model's output predicts token t + 1; the batch convention is entry t =
    log p(token t | tokens < t). Shift right by one; entry 0 (no context) is 0."""
    return jnp.pad(x_bt[:, :-1], ((0, 0), (1, 0)))


def sequence_logprobs(model, tokens_bl, positions_bl, segment_ids_bl, chunk: int, routing_btlk=None):
    """(logp_bl, entropy_bl, aux) of one forward of `model` (an nnx module; call inside jit).

    Entry t is log p(token t | tokens < t) and the entropy of the distribution token t was drawn
    from; entry 0 is 0 (no context). Packed rows: the entry of a segment's first token is
    meaningless (its context is the previous segment) and callers mask it.
    routing_btlk: int32 [B, L, L_r, K] expert ids to replay in the MoE layers (Rollout.routing_btlk;
    docs/contracts.md § Model); None = the routers select. aux.routing_btlk / aux.router_choice_btlk
    report the routing used and the routers' own choice.
    """
    hidden_bld, _, aux = model(tokens_bl, positions_bl, segment_ids_bt=segment_ids_bl, routing_btlk=routing_btlk)
    # hidden at t-1 predicts token t: score targets tokens[1:] and shift back to the batch convention
    next_bl = jnp.roll(tokens_bl, -1, axis=1)
    logp, ent = token_logprobs_and_entropy(hidden_bld, model.unembed_weight(), next_bl, chunk)
    return shift_to_sequence(logp), shift_to_sequence(ent), aux


def completion_segments(completion_mask_bl):
    """Segment ids of unpacked rows: 1 up to the end of the completion, 0 on the trailing pad, so MoE
    load statistics and the balance loss ignore padding. Rows with an empty completion are all 1."""
    length = completion_mask_bl.shape[1]
    pos_l = jnp.arange(length)
    end_b = jnp.max(jnp.where(completion_mask_bl > 0, pos_l + 1, 0), axis=-1)
    end_b = jnp.where(end_b == 0, length, end_b)
    return (pos_l[None, :] < end_b[:, None]).astype(jnp.int32)


def row_positions(tokens_bl):
    return jnp.broadcast_to(jnp.arange(tokens_bl.shape[1], dtype=jnp.int32), tokens_bl.shape)


def make_logprob_fn(graphdef, mesh: Mesh, chunk: int = 128, params_sharding=None, model_state_sharding=None,
                    rules: Rules = DEFAULT_RULES, with_router_choice: bool = False):
    """Jitted (params, model_state, tokens_bl, completion_mask_bl, routing_btlk=None) -> logp_bl, zero
    outside the completion, for unpacked rows (prompt + completion + pad): π_old recomputed by the
    trainer and π_ref of a frozen reference.

    routing_btlk: int32 [B, L, L_r, K] (Rollout.routing_btlk) replays the sampler's experts; None = the
    routers select (a separate compiled program). with_router_choice=True: returns (logp_bl,
    router_choice_btlk), the routers' own top-K at every position (None for a dense model), so
    model.moe.router_disagreement(router_choice_btlk, routing_btlk, mask) measures the sampler/trainer
    routing mismatch without a second forward."""

    def logprobs(params, model_state, tokens_bl, completion_mask_bl, routing_btlk):
        model = nnx.merge(graphdef, params, model_state)
        logp_bl, _, aux = sequence_logprobs(model, tokens_bl, row_positions(tokens_bl),
                                            completion_segments(completion_mask_bl), chunk, routing_btlk)
        logp_bl = jnp.where(completion_mask_bl > 0, logp_bl, 0.0)
        return (logp_bl, aux.router_choice_btlk) if with_router_choice else logp_bl

    bsh = batch_sharding(mesh, rules)
    jitted = jax.jit(logprobs, in_shardings=(params_sharding, model_state_sharding, bsh, bsh, bsh),
                     out_shardings=bsh)

    def run(params, model_state, tokens_bl, completion_mask_bl, routing_btlk=None):
        with jax.set_mesh(mesh):
            return jitted(params, model_state, tokens_bl, completion_mask_bl, routing_btlk)

    return run
