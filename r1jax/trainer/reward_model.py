"""Reward models (DeepSeek-R1 §2.3.4): a scalar head on the decoder, trained with the Bradley–Terry
objective on preference pairs, and the on-device scorer the RL stage calls.

    rm_policy = reward_policy(policy, mesh, head_init_std=0.0)     # decoder from any policy source
    objective = bradley_terry_objective()                           # for make_train_step / fit
    ds = make_pair_dataset(encode_pairs(pairs, tokenizer, cfg)[0], tokenizer.pad_id, cfg)

    rm = RewardModel.load(workdir, mesh)                            # a finished `r1jax rm` workdir
    scores = rm.score(questions, responses)                         # float32 [N]

**Model.** `RewardTransformer` is the decoder (`model.Transformer`, parameter paths unchanged) plus
`reward_head`, a Linear d_model -> 1 with a bias, computed in float32 on the final-normed hidden state
of the last token of the row. The row is the template's prompt, then the *view* of the response,
then EOS (the last token, so an empty view still has a token of its own to score).

**Views** (`response_view`, the one function used in training and in scoring): "summary" reads the
summary only, `split_completion(response, "r1").final` (the text after the second
`|special_token|`; a missing summary reads as ""; a response without any marker is read like a chat
completion, whole, as the accuracy reward reads it), which is how the paper judges helpfulness;
"response" reads the whole response (reasoning and summary), how it judges harmlessness.

**Length.** A row longer than `max_len` keeps the end of the prompt (where the question is) and the
start and end of the view (the middle is dropped; the summary is at the end), then EOS
(`encode_scored`); training counts such pairs.

**Batches.** `PairBatch` holds P pairs as chosen and rejected rows [P, L] (padded with pad_id) and
the index of each row's last token. The forward runs them as one [2P, L] batch, interleaved (row 2j =
chosen j, row 2j+1 = rejected j), so every device scores the pairs it holds and micro-batches keep
pairs whole. An epoch's last batch is topped up with weight-0 pairs: one compiled shape.

**Objective.** loss = mean over pairs of -log σ(r_chosen - r_rejected) (`jax.nn.log_sigmoid`: stable
at any margin); metrics: accuracy (r_chosen > r_rejected; a tie counts half, so the zero-initialised
head is at chance, 0.5), margin (mean r_chosen - r_rejected), reward_chosen, reward_rejected.

**A reward-model workdir** is a stage workdir (policy.json holds the decoder's config, tokenizer/,
checkpoints/<step>/policy holds the decoder *and* the head) plus `reward_model.json` (view, template,
max_len, length buckets). It is a reward-model source (`RewardModel.load`), not a policy source.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax import fileio
from r1jax.data import templates
from r1jax.data.tokenizer import Tokenizer, load_tokenizer
from r1jax.fileio import write_json
from r1jax.model import ModelConfig, state_shardings
from r1jax.model.config import config_from_dict
from r1jax.model.layers import param
from r1jax.model.transformer import Transformer
from r1jax.parallel import multihost
from r1jax.parallel.rules import DEFAULT_RULES, Rules, logical_to_spec
from r1jax.reward.mathcheck import split_completion
from r1jax.trainer.policy import POLICY_RECORD, TOKENIZER_DIR, Policy, restore_policy_item
from r1jax.trainer.state import batch_sharding, split_model_state
from r1jax.trainer.step import Objective

REWARD_RECORD = "reward_model.json"
VIEWS = ("summary", "response")


# ── what the reward model reads ─────────────────────────────────────────────────────────────


def response_view(view: str, response: str) -> str:
    """The part of `response` a reward model of `view` reads (stripped): "summary" = the R1 summary
    (after the second |special_token|; "" when missing), "response" = all of it."""
    if view == "summary":
        final = split_completion(response, "r1").final
        return "" if final is None else final.strip()
    if view == "response":
        return response.strip()
    raise ValueError(f"reward model view {view!r}; choose one of {VIEWS}")


def encode_scored(tokenizer: Tokenizer, template: str, view: str, question: str, response: str,
                  max_len: int) -> tuple[np.ndarray, bool]:
    """(int32 token ids, truncated): render_example(template, question, view of response), then EOS;
    at most `max_len` tokens (see the module docstring for what a long row keeps)."""
    prompt, text = templates.render_example(template, question, response_view(view, response))
    prompt_ids = tokenizer.encode(prompt)
    view_ids = tokenizer.encode(text) if text.strip() else []
    budget = max_len - 1  # room before the EOS
    if len(prompt_ids) + len(view_ids) <= budget:
        return np.asarray(prompt_ids + view_ids + [tokenizer.eos_id], np.int32), False
    keep_prompt = min(len(prompt_ids), budget - min(len(view_ids), budget // 2))
    keep_view = budget - keep_prompt
    head = (keep_view + 1) // 2
    view_ids = view_ids[:head] + view_ids[len(view_ids) - (keep_view - head):] if keep_view else []
    ids = prompt_ids[len(prompt_ids) - keep_prompt:] + view_ids + [tokenizer.eos_id]
    return np.asarray(ids, np.int32), True


def length_buckets(max_len: int) -> tuple[int, ...]:
    """The row lengths the scorer compiles for: powers of two from 64 below max_len, and max_len."""
    out, n = [], 64
    while n < max_len:
        out.append(n)
        n *= 2
    return (*out, max_len)


# ── the model ───────────────────────────────────────────────────────────────────────────────


def _head_init(d_model: int, std: float):
    """(kernel [d_model, 1], bias [1]), float32: normal(0, std) from a fixed key (std 0 = zeros), and 0."""
    key = jax.random.key(20250122)
    return std * jax.random.normal(key, (d_model, 1), jnp.float32), jnp.zeros((1,), jnp.float32)


class RewardTransformer(Transformer):
    """The decoder with a scalar head: `scores(tokens_bl, last_b)` -> (float32 r_b, ModelAux)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, head_init_std: float = 0.0):
        super().__init__(cfg, rngs=rngs)
        kernel, bias = _head_init(cfg.d_model, head_init_std)
        self.reward_head_kernel = param(kernel, ("embed", None))
        self.reward_head_bias = param(bias, (None,))

    def scores(self, tokens_bl, last_b):
        """r_b = head(hidden[b, last_b[b]]) for unpacked rows whose tokens after last_b are padding."""
        length = tokens_bl.shape[1]
        pos_l = jnp.arange(length, dtype=jnp.int32)
        positions_bl = jnp.broadcast_to(pos_l, tokens_bl.shape)
        segment_ids_bl = (pos_l[None, :] <= last_b[:, None]).astype(jnp.int32)  # padding: segment 0
        hidden_bld, _, aux = self(tokens_bl, positions_bl, segment_ids_bt=segment_ids_bl)
        # the last token's hidden state, as a one-hot contraction (a gather would reshard the batch)
        at_last_bl = (pos_l[None, :] == last_b[:, None]).astype(jnp.float32)
        h_bd = jnp.einsum("bld,bl->bd", hidden_bld.astype(jnp.float32), at_last_bl)
        r_b = jnp.einsum("bd,do->bo", h_bd, self.reward_head_kernel[...].astype(jnp.float32))[:, 0]
        return r_b + self.reward_head_bias[...].astype(jnp.float32)[0], aux


def abstract_reward_model(cfg: ModelConfig, head_init_std: float = 0.0):
    """(graphdef, abstract state) of a RewardTransformer: shapes only."""
    model = nnx.eval_shape(lambda: RewardTransformer(cfg, rngs=nnx.Rngs(0), head_init_std=head_init_std))
    return nnx.split(model)


def reward_policy(policy: Policy, mesh: Mesh, head_init_std: float = 0.0, rules: Rules = DEFAULT_RULES) -> Policy:
    """A Policy whose graph is a RewardTransformer: the decoder's parameters of `policy` (any policy
    source), plus a fresh head (zeros, or normal(0, head_init_std)), every array in its sharding."""
    graphdef, abstract = abstract_reward_model(policy.model_cfg, head_init_std)
    kernel, bias = _head_init(policy.model_cfg.d_model, head_init_std)
    head_values = {("reward_head_kernel",): kernel, ("reward_head_bias",): bias}
    decoder = dict(nnx.to_flat_state(policy.params))
    flat = []
    for path, var in nnx.to_flat_state(split_model_state(abstract)[0]):
        if path in head_values:
            flat.append((path, var.replace(head_values[path])))
        elif path in decoder:
            flat.append((path, decoder[path]))
        else:
            raise ValueError(f"reward_policy: the policy has no parameter {'/'.join(map(str, path))}")
    params = nnx.from_flat_state(flat)
    params = jax.device_put(params, state_shardings(params, mesh, rules))
    return dataclasses.replace(policy, graphdef=graphdef, params=params)


# ── preference pairs -> batches ─────────────────────────────────────────────────────────────


@dataclasses.dataclass(frozen=True)
class PairPipelineConfig:
    batch_size: int
    """Preference pairs per step (each is a chosen and a rejected row)."""
    seq_len: int
    """Tokens per row: the prompt, the view of the response and EOS (longer rows are cut, and counted)."""
    template: str = "r1"
    view: str = "summary"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    """Passes over the pairs; None = repeat forever."""

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"PairPipelineConfig.view={self.view!r}; choose one of {VIEWS}")
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(f"PairPipelineConfig: need batch_size >= 1 and seq_len >= 2, got "
                             f"{self.batch_size}, {self.seq_len}")
        templates.render_prompt(self.template, "")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["chosen_pl", "rejected_pl", "chosen_last_p", "rejected_last_p", "weight_p"],
                   meta_fields=[])
@dataclasses.dataclass
class PairBatch:
    chosen_pl: np.ndarray  # int32 [P, L]: prompt + view of the chosen response + EOS, then pad_id
    rejected_pl: np.ndarray  # int32 [P, L]: the same for the rejected response
    chosen_last_p: np.ndarray  # int32 [P]: index of the chosen row's last token (its EOS)
    rejected_last_p: np.ndarray  # int32 [P]
    weight_p: np.ndarray  # float32 [P]: 1 for a pair, 0 for a top-up pair

    @property
    def loss_mask_bl(self) -> np.ndarray:
        """[2P, L] the tokens the forward reads (the supervised loop counts them for its throughput)."""
        length = self.chosen_pl.shape[1]
        pos = np.arange(length)[None, :]
        real = self.weight_p[:, None] > 0
        return np.concatenate([(pos <= self.chosen_last_p[:, None]) & real,
                               (pos <= self.rejected_last_p[:, None]) & real]).astype(np.int32)


def encode_pairs(pairs: Sequence[dict], tokenizer: Tokenizer, cfg: PairPipelineConfig) -> tuple[list, int]:
    """([(chosen ids, rejected ids)], pairs with a truncated row) of preference pairs
    {"question", "chosen", "rejected"}, all tokenised up front."""
    out, truncated = [], 0
    for pair in pairs:
        c, tc = encode_scored(tokenizer, cfg.template, cfg.view, pair["question"], pair["chosen"], cfg.seq_len)
        r, tr = encode_scored(tokenizer, cfg.template, cfg.view, pair["question"], pair["rejected"], cfg.seq_len)
        out.append((c, r))
        truncated += int(tc or tr)
    return out, truncated


def _collate(items: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int, seq_len: int, pad_id: int) -> PairBatch:
    tokens = np.full((2, batch_size, seq_len), pad_id, np.int32)
    last = np.zeros((2, batch_size), np.int32)
    weight = np.zeros(batch_size, np.float32)
    for j, pair in enumerate(items):
        for k, ids in enumerate(pair):
            tokens[k, j, :len(ids)] = ids
            last[k, j] = len(ids) - 1
        weight[j] = 1.0
    return PairBatch(tokens[0], tokens[1], last[0], last[1], weight)


def make_pair_dataset(encoded: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int,
                      cfg: PairPipelineConfig) -> grain.MapDataset:
    """A grain dataset of PairBatch; `it = iter(ds)` checkpoints with it.get_state() / set_state().
    Order: shuffle (seed; a new permutation every epoch) -> repeat -> batch (the last one topped up)."""
    ds = grain.MapDataset.source(list(range(len(encoded))))
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs).map(lambda i: encoded[i])
    return ds.batch(cfg.batch_size, drop_remainder=False,
                    batch_fn=lambda items: _collate(list(items), cfg.batch_size, cfg.seq_len, pad_id))


# ── the Bradley–Terry objective ─────────────────────────────────────────────────────────────


def bradley_terry_loss(r_chosen_p, r_rejected_p, weights_p):
    """Σ_p w_p · -log σ(r_chosen - r_rejected), with log_sigmoid (finite at any margin); weights
    normalised over the batch give the mean."""
    return -jnp.sum(weights_p * jax.nn.log_sigmoid(r_chosen_p - r_rejected_p))


def pair_scores(model: RewardTransformer, batch: PairBatch):
    """(r_chosen_p, r_rejected_p, aux): one forward over the 2P rows, interleaved chosen/rejected."""
    p, length = batch.chosen_pl.shape
    tokens = jnp.stack([batch.chosen_pl, batch.rejected_pl], axis=1).reshape(2 * p, length)
    last = jnp.stack([batch.chosen_last_p, batch.rejected_last_p], axis=1).reshape(2 * p)
    r_b, aux = model.scores(tokens, last)
    r_p2 = r_b.reshape(p, 2)
    return r_p2[:, 0], r_p2[:, 1], aux


def bradley_terry_objective() -> Objective:
    def prepare(batch: PairBatch):
        w_p = batch.weight_p.astype(jnp.float32)
        return batch, w_p / jnp.maximum(jnp.sum(w_p), 1.0)

    def loss(model, micro):
        batch, w_p = micro
        r_c, r_r, aux = pair_scores(model, batch)
        raw = batch.weight_p.astype(jnp.float32)
        margin = r_c - r_r
        correct = jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0))
        sums = {"pairs": jnp.sum(raw), "correct": jnp.sum(raw * correct), "margin_sum": jnp.sum(raw * margin),
                "chosen_sum": jnp.sum(raw * r_c), "rejected_sum": jnp.sum(raw * r_r)}
        return bradley_terry_loss(r_c, r_r, w_p), sums, aux

    def metrics(batch, sums):
        n = jnp.maximum(sums["pairs"], 1.0)
        return {"accuracy": sums["correct"] / n, "margin": sums["margin_sum"] / n,
                "reward_chosen": sums["chosen_sum"] / n, "reward_rejected": sums["rejected_sum"] / n,
                "pairs": sums["pairs"]}

    return Objective(loss=loss, prepare=prepare, metrics=metrics)


# ── the workdir record and the scorer ───────────────────────────────────────────────────────


def write_reward_record(workdir: str, *, view: str, template: str, max_len: int, **info) -> None:
    """reward_model.json: with policy.json (the decoder), tokenizer/ and a checkpoint, what makes a
    workdir loadable by RewardModel.load."""
    if jax.process_index() != 0:
        return
    write_json(os.path.join(workdir, REWARD_RECORD), {
        "format": 1, "view": view, "template": template, "max_len": max_len, "buckets": list(length_buckets(max_len)),
        "head": "reward_head_kernel, reward_head_bias: float32 Linear d_model -> 1 on the last token", **info})


def _batch_shards(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    spec = logical_to_spec(("batch",), rules)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return math.prod(mesh.shape[a] for a in axes)


class RewardModel:
    """A trained reward model on a mesh: `score(questions, responses)` -> float32 [N].

    Rows are rendered as in training (the recorded template and view, `encode_scored`), sorted by
    length, cut into chunks of at most `batch_rows`, each padded to the smallest length bucket
    (reward_model.json) and to the smallest row bucket (the batch shards of the mesh times a power of
    two, up to batch_rows) that fits it: at most len(length buckets) x len(row buckets) compiled
    programs, whatever the batches. The forward is jitted with the parameters in their shardings on
    `mesh` and the rows split over its batch axes."""

    def __init__(self, model_cfg: ModelConfig, graphdef, params, model_state, tokenizer, record: dict, mesh: Mesh,
                 batch_rows: int = 64, origin: str = ""):
        self.model_cfg, self.graphdef, self.params, self.model_state = model_cfg, graphdef, params, model_state
        self.tokenizer, self.record, self.mesh, self.origin = tokenizer, record, mesh, origin
        self.view, self.template, self.max_len = record["view"], record["template"], int(record["max_len"])
        self.buckets = tuple(int(b) for b in record.get("buckets") or length_buckets(self.max_len))
        shards = _batch_shards(mesh)
        top = max(shards, -(-batch_rows // shards) * shards)
        rows, n = [], shards
        while n < top:
            rows.append(n)
            n *= 2
        self.row_buckets = (*rows, top)
        bsh = batch_sharding(mesh)

        def forward(params, model_state, tokens_bl, last_b):
            model = nnx.merge(graphdef, params, model_state)
            return model.scores(tokens_bl, last_b)[0]

        in_shardings = (state_shardings(params, mesh), state_shardings(model_state, mesh), bsh, bsh)
        self._rows_sharding = bsh
        self._forward = jax.jit(forward, in_shardings=in_shardings, out_shardings=NamedSharding(mesh, P()))

    @classmethod
    def load(cls, workdir: str, mesh: Mesh, step: int = -1, batch_rows: int = 64) -> RewardModel:
        """The reward model of a finished `r1jax rm` workdir (its latest checkpoint, or `step`), its
        parameters placed straight into their shardings on `mesh`."""
        path = os.path.join(workdir, REWARD_RECORD)
        if not fileio.isfile(path):
            raise FileNotFoundError(f"{workdir!r}: no {REWARD_RECORD}; not an `r1jax rm` workdir")
        record = fileio.read_json(path)
        cfg = config_from_dict(fileio.read_json(os.path.join(workdir, POLICY_RECORD))["model"],
                               where=os.path.join(workdir, POLICY_RECORD))
        tokenizer = load_tokenizer(os.path.join(workdir, TOKENIZER_DIR))
        graphdef, abstract = abstract_reward_model(cfg)
        params, model_state, chosen = restore_policy_item(workdir, step, abstract, mesh, "reward model path",
                                                          "reward model step")
        return cls(cfg, graphdef, params, model_state, tokenizer, record, mesh, batch_rows,
                   origin=f"rm:{workdir}@{chosen}")

    def encode(self, question: str, response: str) -> tuple[np.ndarray, bool]:
        return encode_scored(self.tokenizer, self.template, self.view, question, response, self.max_len)

    def score(self, questions: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """float32 [N]: the reward of each (question, response)."""
        if len(questions) != len(responses):
            raise ValueError(f"RewardModel.score: {len(questions)} questions but {len(responses)} responses")
        rows = [self.encode(q, r)[0] for q, r in zip(questions, responses)]
        out = np.zeros(len(rows), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        top = self.row_buckets[-1]
        for start in range(0, len(order), top):
            chunk = order[start:start + top]
            n_rows = min(b for b in self.row_buckets if b >= len(chunk))
            length = min(b for b in self.buckets if b >= max(len(rows[i]) for i in chunk))
            tokens = np.full((n_rows, length), self.tokenizer.pad_id, np.int32)
            last = np.zeros(n_rows, np.int32)
            for j, i in enumerate(chunk):
                tokens[j, :len(rows[i])] = rows[i]
                last[j] = len(rows[i]) - 1
            # the same rows on every process (MixedScorer scores the global batch): each places its slices
            tokens, last = multihost.put((tokens, last), self._rows_sharding)
            with jax.set_mesh(self.mesh):
                r = self._forward(self.params, self.model_state, tokens, last)
            out[chunk] = np.asarray(jax.device_get(r))[:len(chunk)]
        return out
