"""Prefill + on-device decode loop over a preallocated KV cache: G completions per prompt.

One jitted program per shape bucket does everything between the prompt batch and the `Rollout`:

  prefill B prompts (right-padded, positions 0..P-1; cache slot = absolute position, so the padding
  slots are overwritten before any query can see them) -> repeat the cache G times (the prompt is
  computed once, not G times) -> sample the first token from position len_p - 1 -> lax.while_loop:
  feed the last token at position len_p + t - 1, sample, advance the stop automata, until every row
  has finished or max_new_tokens is reached -> assemble tokens_bl / log-probs in the training layout.

The KV cache is created and consumed inside that one program, so it never crosses a jit boundary:
XLA updates it in place in the loop (what donation buys across calls, here for free). Finished rows
are not extended: they keep running in the batch (static shapes) but nothing they produce is kept.
Prompt length and max_new_tokens are padded up to buckets (powers of two), so a training run
compiles a handful of programs; temperature, top_p and max_new_tokens are runtime values.

Routing record (MoE, `record_routing=True`): the prefill's and every decode step's ModelAux.routing_btlk
(the experts each token ran through in each MoE layer of the main stack) are kept and laid out like
tokens_bl, for the trainer to replay (docs/contracts.md § Rollout). The prompt's routing comes from
the one prefill and is repeated G times like its cache. A completion token is routed when it is fed
back as the next step's input, so the loop runs one step past the last sample (its samples are
discarded) to route the last token of every row. Off, the program is the one without it.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.model.api import cache_shardings, state_shardings
from r1jax.model.transformer import main_moe_layers
from r1jax.parallel import multihost
from r1jax.parallel.rules import DEFAULT_RULES, Rules, logical_to_spec, shard
from r1jax.rollout import sampling as sampling_lib
from r1jax.rollout import stops
from r1jax.rollout.types import FINISH_LENGTH, FINISH_STOP, Rollout, SamplingParams


def bucket(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (at least `minimum`)."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def _rows_sharding(mesh: Mesh, shape, rules: Rules) -> NamedSharding:
    """Leading (row) axis over the batch mesh axes where they divide it, the rest replicated."""
    spec = logical_to_spec(("batch",), rules)
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    keep, size = [], 1
    for a in axes:
        if shape[0] % (size * mesh.shape[a]) == 0:
            keep.append(a)
            size *= mesh.shape[a]
    return NamedSharding(mesh, P(tuple(keep) if keep else None, *([None] * (len(shape) - 1))))


def compaction_widths(rows: int, levels: int, shards: int = 1) -> tuple[int, ...]:
    """Batch widths of the decode loop's stages: rows, rows/2, ... (at most `levels` halvings), each a
    multiple of `shards` (the devices the rows are split over) so every shard keeps an equal share."""
    widths = [rows]
    while len(widths) <= levels and widths[-1] % (2 * shards) == 0:
        widths.append(widths[-1] // 2)
    return tuple(widths)


def _decode_program(
    graphdef,
    state,
    prompt_bp,
    lens_b,
    temperature,
    top_p,
    max_new,
    tables,
    rng,
    *,
    n: int,
    max_new_bucket: int,
    cache_len: int,
    top_k: int,
    top_p_active: bool,
    pad_id: int,
    mesh: Mesh | None,
    rules: Rules,
    record_routing: bool = False,
    widths: tuple[int, ...] | None = None,
):
    """The whole rollout for one bucket (pure; jitted by `Sampler`). Rows are prompt * n + g.

    widths: the decode loop's batch width per stage (`compaction_widths`; None = all rows throughout).
    A stage runs until its unfinished rows fit the next width; they are then gathered, with their
    cache, into a batch that wide, so the long tail of a GRPO group is decoded at a fraction of the
    batch. Each row carries its output row id; outputs are written at those ids."""
    model = nnx.merge(graphdef, state)
    b, p = prompt_bp.shape
    rows, m = b * n, max_new_bucket
    widths = widths or (rows,)
    n_routed = main_moe_layers(model.cfg)
    record = record_routing and n_routed > 0  # dense models: nothing to record

    def constrain_cache(cache):
        if mesh is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, cache_shardings(cache, mesh, rules))

    def sample(t, logits_nv, row_n):
        # each row's key from (step, row id): a row's draws do not depend on the batch it is decoded in
        keys_n = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.fold_in(rng, t), row_n)
        return sampling_lib.sample_tokens(keys_n, logits_nv, temperature, top_p, top_k=top_k,
                                          top_p_active=top_p_active)

    # ---- prefill the B prompts once, then give every completion its own copy of the cache
    positions_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    hidden_bpd, cache, prefill_aux = model(
        prompt_bp, positions_bp, cache=constrain_cache(model.init_cache(b, cache_len))
    )
    last_b1d = jnp.take_along_axis(hidden_bpd, (lens_b - 1)[:, None, None], axis=1)
    logits_nv = jnp.repeat(model.logits(last_b1d)[:, 0], n, axis=0)
    cache = constrain_cache(jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), cache))
    lens_n = jnp.repeat(lens_b, n)

    tok_n, lps_n, lpp_n = sample(0, logits_nv, jnp.arange(rows, dtype=jnp.int32))
    stop_states, hit_n = stops.advance(tables, jnp.zeros((len(tables), rows), jnp.int32), tok_n)
    # per-row state of the rows being decoded (width changes from stage to stage) ...
    live = dict(
        row=jnp.arange(rows, dtype=jnp.int32),
        lens=lens_n,
        tok=tok_n,
        stopped=hit_n,
        done=hit_n | (max_new <= 1),
        clen=jnp.ones_like(lens_n),
        stop_states=stop_states,
        cache=cache,
    )
    # ... and the outputs of every row, written at the live rows' ids
    out = dict(
        t=jnp.int32(1),
        comp=jnp.full((rows, m), pad_id, jnp.int32).at[:, 0].set(tok_n),
        lps=jnp.zeros((rows, m), jnp.float32).at[:, 0].set(lps_n),
        lpp=jnp.zeros((rows, m), jnp.float32).at[:, 0].set(lpp_n),
        stopped=hit_n,
        clen=jnp.ones_like(lens_n),
    )
    if record:
        # completion token j is routed at step j + 1, when it is fed back (column j); `fed`: rows whose
        # last token has been fed (a row done at the start of step t has its last token at <= t - 1)
        k = model.cfg.n_experts_per_tok
        out["routing"] = jnp.zeros((rows, m, n_routed, k), jnp.int32)
        live["fed"] = jnp.zeros_like(hit_n)

    def unfinished(lv):
        # with routing: one step past the last sample, so every row's last token is fed and routed; that
        # step keeps nothing else (every row is done: pad, zero log-probs, and at t = m the writes fall
        # outside the buffers, which JAX's scatter drops). Every row is done after step max_new - 1.
        return ~lv["fed"] if record else ~lv["done"]

    def body(carry):
        lv, o = carry
        t, active, row = o["t"], ~lv["done"], lv["row"]
        positions_n1 = (lv["lens"] + t - 1)[:, None]
        hidden_n1d, cache, aux = model(
            shard(lv["tok"][:, None], ("batch", "length")), positions_n1, cache=lv["cache"]
        )
        tok, lps, lpp = sample(t, model.logits(hidden_n1d)[:, 0], row)
        new_states, hit = stops.advance(tables, lv["stop_states"], tok)
        tok = jnp.where(active, tok, pad_id)
        stopped = lv["stopped"] | (active & hit)
        clen = lv["clen"] + active
        new_lv = dict(
            lv,
            tok=tok,
            stopped=stopped,
            done=lv["done"] | hit | (t + 1 >= max_new),
            clen=clen,
            stop_states=jnp.where(active[None], new_states, lv["stop_states"]),
            cache=constrain_cache(cache),
        )
        # row ids are distinct: every write below is a scatter of distinct rows
        new_o = dict(
            o,
            t=t + 1,
            comp=o["comp"].at[row, t].set(tok, unique_indices=True),
            lps=o["lps"].at[row, t].set(jnp.where(active, lps, 0.0), unique_indices=True),
            lpp=o["lpp"].at[row, t].set(jnp.where(active, lpp, 0.0), unique_indices=True),
            stopped=o["stopped"].at[row].set(stopped, unique_indices=True),
            clen=o["clen"].at[row].set(clen, unique_indices=True),
        )
        if record:  # every row: a finished row's column t - 1 lies past its completion and is dropped
            new_o["routing"] = o["routing"].at[row, t - 1].set(aux.routing_btlk[:, 0], unique_indices=True)
            new_lv["fed"] = lv["done"]
        return new_lv, new_o

    def compact(lv, width):
        """The unfinished rows (at most `width`), then finished ones to fill: gathered with their cache."""
        keep = jnp.argsort(~unfinished(lv), stable=True)[:width]
        gathered = {
            name: (x[:, keep] if name == "stop_states" else jax.tree.map(lambda a: a[keep], x))  # noqa: B023
            for name, x in lv.items()
        }
        gathered["cache"] = constrain_cache(gathered["cache"])
        return gathered

    carry = (live, out)
    for stage, width in enumerate(widths):
        next_width = widths[stage + 1] if stage + 1 < len(widths) else 0

        def cond(c, next_width=next_width):
            lv, o = c
            left = jnp.sum(unfinished(lv))
            go = left > 0 if record else (o["t"] < max_new) & (left > 0)
            return go & (left > next_width)

        if stage:
            carry = (compact(carry[0], width), carry[1])
        carry = jax.lax.while_loop(cond, body, carry)
    c = dict(carry[1])

    # ---- training layout: prompt at [0, len_p), completion at [len_p, len_p + len_c), pad after
    j_l = jnp.arange(p + m, dtype=jnp.int32)[None]
    lens_n1, clen_n1 = lens_n[:, None], c["clen"][:, None]
    in_comp_nl = (j_l >= lens_n1) & (j_l < lens_n1 + clen_n1)
    comp_idx_nl = jnp.clip(j_l - lens_n1, 0, m - 1)
    prompt_nl = jnp.pad(jnp.repeat(prompt_bp, n, axis=0), ((0, 0), (0, m)), constant_values=pad_id)
    tokens_nl = jnp.where(
        j_l < lens_n1,
        prompt_nl,
        jnp.where(in_comp_nl, jnp.take_along_axis(c["comp"], comp_idx_nl, axis=1), pad_id),
    )

    def place(x_nm):
        return jnp.where(in_comp_nl, jnp.take_along_axis(x_nm, comp_idx_nl, axis=1), 0.0)

    finish_n = jnp.where(c["stopped"], FINISH_STOP, FINISH_LENGTH).astype(jnp.int32)
    out = dict(
        tokens_bl=tokens_nl,
        prompt_lens_b=lens_n,
        completion_lens_b=c["clen"],
        finish_reason_b=finish_n,
        completion_mask_bl=in_comp_nl.astype(jnp.float32),
        logp_sampling_bl=place(c["lps"]),
        logp_policy_bl=place(c["lpp"]),
    )
    if record:
        comp_routing = c["routing"]
        prompt_routing = jnp.repeat(prefill_aux.routing_btlk, n, axis=0)  # [rows, p, L_r, K]
        prompt_routing = jnp.pad(prompt_routing, ((0, 0), (0, m), (0, 0), (0, 0)))
        fill = jnp.broadcast_to(jnp.arange(comp_routing.shape[-1], dtype=jnp.int32), comp_routing.shape[-2:])
        out["routing_btlk"] = jnp.where(
            (j_l < lens_n1)[..., None, None],
            prompt_routing,
            jnp.where(in_comp_nl[..., None, None],
                      jnp.take_along_axis(comp_routing, comp_idx_nl[..., None, None], axis=1), fill),
        )
    return out


class Sampler:
    """Caches one compiled rollout program per (shape bucket, static sampling settings) for a model.

    With a mesh, the weights keep the shardings they have in training (from their logical axes and the
    rules table) and the rows are split over the batch mesh axes; without one, everything runs on the
    default device. The state passed to `generate` must live on `mesh` (see weight_sync.reshard).

    record_routing: fill Rollout.routing_btlk with the experts every token ran through (MoE models; a
    dense model's stays None), for routing replay in the trainer. `generate(..., record_routing=)`
    overrides it per call; recording and not recording are separate compiled programs.

    compaction_levels: how many times the decode batch may halve as rows finish (0 = never). Each
    level is one more copy of the decode step in the compiled program (compile time) and one gather of
    the unfinished rows' cache when it starts; it pays where a step's cost follows its rows (large
    batches, long completions), docs/benchmarks.md § rollout tail.
    """

    def __init__(
        self,
        graphdef,
        *,
        mesh: Mesh | None = None,
        pad_id: int = 0,
        max_cache_len: int | None = None,
        rules: Rules = DEFAULT_RULES,
        record_routing: bool = False,
        compaction_levels: int = 2,
    ):
        if compaction_levels < 0:
            raise ValueError(f"compaction_levels must be >= 0, got {compaction_levels}")
        self.graphdef = graphdef
        self.compaction_levels = compaction_levels
        self.mesh = mesh
        self.pad_id = pad_id
        self.max_cache_len = max_cache_len
        self.rules = rules
        self.record_routing = record_routing
        self._programs: dict = {}
        self._tables: dict = {}

    # ----------------------------------------------------------------- host-side checks (before compiling)
    def _check(self, cfg, prompt_bp, lens_b, sampling: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        prompt_bp, lens_b = np.asarray(prompt_bp), np.asarray(lens_b)
        if prompt_bp.ndim != 2 or not np.issubdtype(prompt_bp.dtype, np.integer):
            raise ValueError(
                f"prompt_tokens_bp must be a 2-D integer array [B, P], got {prompt_bp.dtype} "
                f"{prompt_bp.shape}"
            )
        if lens_b.shape != prompt_bp.shape[:1] or not np.issubdtype(lens_b.dtype, np.integer):
            raise ValueError(
                f"prompt_lens_b must be integers of shape [{prompt_bp.shape[0]}], got {lens_b.dtype} "
                f"{lens_b.shape}"
            )
        if prompt_bp.shape[0] == 0:
            raise ValueError("generate: the prompt batch is empty")
        for row in np.flatnonzero(lens_b < 1):
            raise ValueError(
                f"prompt row {row} is empty (prompt_lens_b[{row}] = {lens_b[row]}); every prompt "
                "needs at least one token (e.g. BOS)"
            )
        for row in np.flatnonzero(lens_b > prompt_bp.shape[1]):
            raise ValueError(
                f"prompt_lens_b[{row}] = {lens_b[row]} exceeds the prompt array width {prompt_bp.shape[1]}"
            )
        in_prompt = np.arange(prompt_bp.shape[1])[None] < lens_b[:, None]
        bad = in_prompt & ((prompt_bp < 0) | (prompt_bp >= cfg.vocab_size))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"prompt row {row}, position {col}: token id {prompt_bp[row, col]} is outside the "
                f"vocabulary [0, {cfg.vocab_size})"
            )
        limit = min(x for x in (self.max_cache_len, cfg.max_position_embeddings) if x is not None)
        row = int(np.argmax(lens_b))
        if lens_b[row] + sampling.max_new_tokens > limit:
            raise ValueError(
                f"prompt row {row} has {lens_b[row]} tokens; with max_new_tokens="
                f"{sampling.max_new_tokens} it needs a cache of {lens_b[row] + sampling.max_new_tokens} "
                f"slots, more than the cache length {limit} (max_cache_len / max_position_embeddings)"
            )
        return prompt_bp, lens_b

    def _stop_tables(self, sampling: SamplingParams, vocab_size: int, tokenizer):
        key = (
            sampling.stop_token_ids,
            sampling.stop_sequences,
            sampling.stop_strings,
            vocab_size,
            id(tokenizer) if sampling.stop_strings else None,
        )
        if key not in self._tables:  # built once, kept on device (the tokenizer is kept alive for its id)
            tables = stops.build_tables(sampling, vocab_size, tokenizer)
            where = None if self.mesh is None else NamedSharding(self.mesh, P())
            self._tables[key] = (jax.device_put(tables) if where is None else multihost.put(tables, where), tokenizer)
        return self._tables[key][0]

    def _program(self, state, b, p_bucket, m_bucket, cache_len, sampling: SamplingParams, table_shapes,
                 record: bool, routing_shape: tuple[int, int]):
        top_p_active = sampling.top_p < 1.0
        key = (b, p_bucket, m_bucket, cache_len, sampling.n, sampling.top_k, top_p_active, table_shapes, record)
        if key in self._programs:
            return self._programs[key]
        rows = b * sampling.n
        shards = 1
        if self.mesh is not None:
            spec = _rows_sharding(self.mesh, (rows,), self.rules).spec[0]
            shards = int(np.prod([self.mesh.shape[a] for a in ((spec,) if isinstance(spec, str) else spec or ())]))
        fn = functools.partial(
            _decode_program,
            self.graphdef,
            widths=compaction_widths(rows, self.compaction_levels, shards),
            n=sampling.n,
            max_new_bucket=m_bucket,
            cache_len=cache_len,
            top_k=sampling.top_k,
            top_p_active=top_p_active,
            pad_id=self.pad_id,
            mesh=self.mesh,
            rules=self.rules,
            record_routing=record,
        )
        if self.mesh is None:
            jitted = jax.jit(fn)
        else:
            rep = NamedSharding(self.mesh, P())
            by_row = lambda *shape: _rows_sharding(self.mesh, shape, self.rules)  # noqa: E731
            in_sh = (
                state_shardings(state, self.mesh, self.rules),
                by_row(b, p_bucket),
                by_row(b),
                rep,
                rep,
                rep,
                tuple(rep for _ in table_shapes),
                rep,
            )
            length = p_bucket + m_bucket
            out_sh = dict(  # the per-row scalars replicated: every process's host code reads them whole
                tokens_bl=by_row(rows, length),
                prompt_lens_b=rep,
                completion_lens_b=rep,
                finish_reason_b=rep,
                completion_mask_bl=by_row(rows, length),
                logp_sampling_bl=by_row(rows, length),
                logp_policy_bl=by_row(rows, length),
            )
            if record:
                out_sh["routing_btlk"] = by_row(rows, length, *routing_shape)
            jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh)
        self._programs[key] = jitted
        return jitted

    # ----------------------------------------------------------------- the interface
    def _prepare(self, state, prompt_tokens_bp, prompt_lens_b, sampling: SamplingParams, rng, tokenizer,
                 record_routing: bool | None = None):
        """Checks the inputs (before anything compiles), pads them to the bucket, moves them to device
        and picks the compiled program: -> (program, args)."""
        cfg = nnx.merge(self.graphdef, state).cfg  # no copy: only reads the config
        record = self.record_routing if record_routing is None else bool(record_routing)
        record = record and main_moe_layers(cfg) > 0  # a dense model has no routing: same program as off
        prompt_bp, lens_b = self._check(cfg, prompt_tokens_bp, prompt_lens_b, sampling)
        tables = self._stop_tables(sampling, cfg.vocab_size, tokenizer)

        b, max_len = prompt_bp.shape[0], int(lens_b.max())
        p_bucket, m_bucket = bucket(max_len), bucket(sampling.max_new_tokens)
        limit = min(x for x in (self.max_cache_len, cfg.max_position_embeddings) if x is not None)
        cache_len = max(max_len + sampling.max_new_tokens, min(p_bucket + m_bucket, limit))
        width = prompt_bp.shape[1]
        prompt_bp = np.pad(prompt_bp[:, :p_bucket], ((0, 0), (0, max(0, p_bucket - width))))
        in_prompt = np.arange(p_bucket)[None] < lens_b[:, None]
        prompt_bp = np.where(in_prompt, prompt_bp, self.pad_id).astype(np.int32)

        table_shapes = tuple(t.shape for t in tables)
        program = self._program(state, b, p_bucket, m_bucket, cache_len, sampling, table_shapes, record,
                                (main_moe_layers(cfg), cfg.n_experts_per_tok))
        # explicit transfers, so the sampler runs under the trainer's jax.transfer_guard("disallow")
        host = (
            prompt_bp,
            lens_b.astype(np.int32),
            np.float32(sampling.temperature),
            np.float32(sampling.top_p),
            np.int32(sampling.max_new_tokens),
        )
        if self.mesh is None:
            host = jax.device_put(host)
        else:  # every process holds the same prompt batch; each places only its own devices' rows
            rep = NamedSharding(self.mesh, P())
            by_row = lambda *shape: _rows_sharding(self.mesh, shape, self.rules)  # noqa: E731
            host = multihost.put(host, (by_row(*prompt_bp.shape), by_row(b), rep, rep, rep))
            rng = multihost.put(rng, rep)
        return program, (state, *host, tables, rng)

    def _mesh_context(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def generate(
        self,
        state,
        prompt_tokens_bp,
        prompt_lens_b,
        sampling: SamplingParams,
        rng,
        *,
        tokenizer=None,
        record_routing: bool | None = None,
    ) -> Rollout:
        """-> Rollout; record_routing: None = the Sampler's setting."""
        program, args = self._prepare(state, prompt_tokens_bp, prompt_lens_b, sampling, rng, tokenizer,
                                      record_routing)
        with self._mesh_context():
            rollout = Rollout(**program(*args))
        if tokenizer is not None:
            rollout = _decode_texts(rollout, tokenizer, sampling, self.pad_id)
        return rollout

    def lower(self, state, prompt_tokens_bp, prompt_lens_b, sampling: SamplingParams, rng, *, tokenizer=None,
              record_routing: bool | None = None):
        """The lowered rollout program for these inputs (inspect its HLO, or .compile() ahead of time)."""
        program, args = self._prepare(state, prompt_tokens_bp, prompt_lens_b, sampling, rng, tokenizer,
                                      record_routing)
        with self._mesh_context():
            return program.lower(*args)


def _decode_texts(rollout: Rollout, tokenizer, sampling: SamplingParams, pad_id: int) -> Rollout:
    """Decodes the completions, cutting each text right after its first stop string. A final stop
    token id (EOS, <|im_end|>) is left out of the text (it stays in the tokens); the text of a stop
    string or stop token sequence is kept.

    The device automata find every ASCII stop string exactly; if the host text shows one the device
    missed (a non-ASCII string across partial UTF-8 tokens), the row's tokens are cut at the first
    token whose prefix decodes to contain it, so texts and arrays never disagree about where it ended.

    Each process decodes the rows its own devices hold (multihost.owned_rows); texts and cuts are then
    exchanged, so every process ends with every row's text and the same arrays.
    """
    rows = multihost.owned_rows(rollout.tokens_bl)
    tokens = multihost.local_rows(rollout.tokens_bl, rows)
    plens, clens, finish = (np.asarray(x)[rows] for x in jax.device_get(
        (rollout.prompt_lens_b, rollout.completion_lens_b, rollout.finish_reason_b)))
    stop_strings, stop_ids = sampling.stop_strings, set(sampling.stop_token_ids)
    texts, cuts = [], []
    for j in range(len(rows)):
        comp = tokens[j, plens[j] : plens[j] + clens[j]].tolist()
        ends_with_stop_id = finish[j] == FINISH_STOP and comp[-1] in stop_ids
        text = tokenizer.decode(comp[:-1] if ends_with_stop_id else comp)
        end = stops.find_stop_string(text, stop_strings)
        cut = -1
        if end is not None:
            earlier = stops.find_stop_string(tokenizer.decode(comp[:-1]), stop_strings) is not None
            if finish[j] != FINISH_STOP or earlier:
                cut = next(
                    k
                    for k in range(1, len(comp) + 1)
                    if stops.find_stop_string(tokenizer.decode(comp[:k]), stop_strings) is not None
                )
                text = tokenizer.decode(comp[:cut])
                end = stops.find_stop_string(text, stop_strings)
            text = text[:end]
        texts.append(text)
        cuts.append(cut)
    n = rollout.num_rows
    texts, cuts = zip(*multihost.gather_rows(rows, list(zip(texts, cuts)), n))
    cut_b = np.asarray(cuts, np.int32)
    if not (cut_b >= 0).any():
        return Rollout(**{**_arrays(rollout), "texts": list(texts)})
    return Rollout(**_cut_rows(_arrays(rollout), cut_b, pad_id), texts=list(texts))


@functools.partial(jax.jit, static_argnums=2)
def _cut_rows(arrays: dict, cut_b, pad_id: int) -> dict:
    """Ends row b's completion after cut_b[b] tokens (-1: unchanged), as a finished (stopped) row: the
    tokens after it become padding, masks and log-probs 0, recorded routing the fill value (experts
    0..K-1). Jitted on the arrays where they live: the same program on every process."""
    cut = cut_b >= 0
    start_b = arrays["prompt_lens_b"] + jnp.where(cut, cut_b, arrays["completion_lens_b"])
    after_bl = cut[:, None] & (jnp.arange(arrays["tokens_bl"].shape[1])[None] >= start_b[:, None])
    out = dict(arrays)
    out["tokens_bl"] = jnp.where(after_bl, pad_id, arrays["tokens_bl"])
    for name in ("completion_mask_bl", "logp_sampling_bl", "logp_policy_bl"):
        out[name] = jnp.where(after_bl, 0.0, arrays[name])
    if "routing_btlk" in arrays:
        k = arrays["routing_btlk"].shape[-1]
        out["routing_btlk"] = jnp.where(after_bl[:, :, None, None], jnp.arange(k, dtype=jnp.int32),
                                        arrays["routing_btlk"])
    out["completion_lens_b"] = jnp.where(cut, cut_b, arrays["completion_lens_b"])
    out["finish_reason_b"] = jnp.where(cut, FINISH_STOP, arrays["finish_reason_b"]).astype(jnp.int32)
    return out


def _arrays(rollout: Rollout) -> dict:
    return {
        f: getattr(rollout, f)
        for f in (
            "tokens_bl",
            "prompt_lens_b",
            "completion_lens_b",
            "finish_reason_b",
            "completion_mask_bl",
            "logp_sampling_bl",
            "logp_policy_bl",
            "routing_btlk",
        )
        if getattr(rollout, f) is not None
    }


_SAMPLERS: dict = {}


def generate(
    graphdef,
    state,
    prompt_tokens_bp,
    prompt_lens_b,
    sampling: SamplingParams,
    rng,
    *,
    mesh: Mesh | None = None,
    tokenizer=None,
    record_routing: bool = False,
) -> Rollout:
    """The rollout interface shared by the trainer and the evals (docs/contracts.md § Rollout).

    Keeps one `Sampler` per (graphdef, mesh, pad id), so repeated calls reuse compiled programs.
    record_routing: fill Rollout.routing_btlk (MoE models) for routing replay in the trainer.
    """
    pad_id = 0 if tokenizer is None or tokenizer.pad_id is None else int(tokenizer.pad_id)
    key = (graphdef, mesh, pad_id)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = Sampler(graphdef, mesh=mesh, pad_id=pad_id)
    return _SAMPLERS[key].generate(state, prompt_tokens_bp, prompt_lens_b, sampling, rng, tokenizer=tokenizer,
                                   record_routing=record_routing)
