"""grain pipelines: RL prompt batches (stage ①) and SFT batches (cold start, rejection-sampling SFT,
distillation).

Both return a `grain.MapDataset`; `it = iter(ds)` is the iterator, `it.get_state()` its checkpoint
(a JSON-able dict, saved with the model), `it.set_state(state)` resumes at the identical next batch.

RL prompts: every prompt is tokenised once when the dataset is built (prompt sets are small; this
checks every length up front, so over-long prompts are reported before step 0, never mid-run).
Order: shuffle (seed; a new permutation every epoch) -> repeat -> batch; the same batches on every process.

SFT: tokenised lazily (SFT sets can be large) -> loss mask on the response tokens -> truncation
policy -> first-fit packing into rows of seq_len with segment ids and per-segment positions.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import grain
import jax
import numpy as np

from r1jax.data import templates
from r1jax.data.readers import DataError
from r1jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# RL prompts
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PromptPipelineConfig:
    batch_size: int  # prompts per step, on every process (before the G samples of each)
    max_prompt_len: int  # tokens; a longer prompt is an error (on_error="fail") or skipped and counted
    template: str = "r1_zero"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever (RL); an int for a finite eval pass
    # () pads every batch to max_prompt_len (one compiled shape); else the smallest bucket that fits
    # the batch's longest prompt (a few shapes, less padding).
    buckets: tuple[int, ...] = ()
    add_bos: bool = False
    on_error: str = "fail"  # "fail" | "skip"
    drop_remainder: bool = True

    def __post_init__(self):
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"PromptPipelineConfig.on_error={self.on_error!r}; choose 'fail' or 'skip'")
        if self.buckets and max(self.buckets) != self.max_prompt_len:
            raise ValueError(
                f"PromptPipelineConfig.buckets={self.buckets}: the largest bucket must equal "
                f"max_prompt_len={self.max_prompt_len}"
            )
        templates.render_prompt(self.template, "")  # validates the name now, not at the first batch


@dataclasses.dataclass
class PromptBatch:
    tokens_bp: np.ndarray  # int32 [B, P], right-padded with pad_id
    lens_b: np.ndarray  # int32 [B]
    examples: list[dict]  # the example dicts, same order (answers and tests for the reward server)


@dataclasses.dataclass(frozen=True)
class PromptStats:
    total: int  # examples given
    kept: int  # after over-long prompts were skipped
    skipped_overlong: int
    shard_size: int  # prompts this process sees per epoch
    errors: tuple[str, ...] = ()


def make_prompt_dataset(
    examples: Sequence[dict],
    tokenizer: Tokenizer,
    cfg: PromptPipelineConfig,
    process_index: int | None = None,
    process_count: int | None = None,
    batched: bool = True,
) -> tuple[grain.MapDataset, PromptStats]:
    """Dataset of PromptBatch. By default every process builds the same global batches: prompts are
    few and small, and with the whole batch on every host the sampler places each device's rows
    (multihost.put), every host can log and evaluate every row, and the iterator state is one state.
    process_index/count given: process i sees only the disjoint shard i::count of the (kept) prompts.
    batched=False: the (tokens, example) items before batching (to mix sources)."""
    if process_index is None or process_count is None:
        process_index, process_count = 0, 1
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")

    # Every process tokenises all prompts, not just its shard: the kept set (and so the sharding)
    # must be identical on every host.
    tokens, kept, errors = [], [], []
    for row, example in enumerate(examples):
        if not isinstance(example.get("question"), str):
            raise example_error(example, row, f"example {example.get('id')!r} has no text field 'question'")
        ids = encode_prompt(tokenizer, cfg.template, example, cfg.add_bos)
        if len(ids) > cfg.max_prompt_len:
            err = example_error(
                example, row,
                f"prompt of example {example.get('id')!r} is {len(ids)} tokens, over max_prompt_len="
                f"{cfg.max_prompt_len}",
            )
            if cfg.on_error == "fail":
                raise err
            errors.append(str(err))
            log.warning("skipping over-long prompt: %s", err)
            continue
        tokens.append(np.asarray(ids, np.int32))
        kept.append(example)
    if not kept:
        raise ValueError(f"no prompts left of {len(examples)} (all over max_prompt_len={cfg.max_prompt_len})")

    shard = list(range(process_index, len(kept), process_count))
    stats = PromptStats(
        total=len(examples), kept=len(kept), skipped_overlong=len(examples) - len(kept),
        shard_size=len(shard), errors=tuple(errors[:20]),
    )
    log.info("prompts: %s", stats)

    ds = grain.MapDataset.source(shard)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(lambda i: (tokens[i], kept[i]))
    if not batched:
        return ds, stats
    return _batch_prompts(ds, tokenizer.pad_id, cfg), stats


def _batch_prompts(ds: grain.MapDataset, pad_id: int, cfg: PromptPipelineConfig) -> grain.MapDataset:
    return ds.batch(
        cfg.batch_size, drop_remainder=cfg.drop_remainder,
        batch_fn=lambda items: collate_prompts(items, pad_id, cfg.max_prompt_len, cfg.buckets),
    )


def make_mixed_prompt_dataset(
    sources: Sequence[tuple[Sequence[dict], float]],
    tokenizer: Tokenizer,
    cfg: PromptPipelineConfig,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[grain.MapDataset, list[PromptStats]]:
    """PromptBatches drawing from several prompt sources in proportion to their shares (R1 §2.3.4: RL
    for all scenarios mixes reasoning and general prompts). Each source is shuffled and repeated on
    its own (seed + its index), then grain interleaves them deterministically by share, so a batch of
    B prompts holds about share * B of each; the iterator state is one index, checkpointed as for one
    source. One source with share 1 is exactly `make_prompt_dataset` (num_epochs must be None)."""
    if cfg.num_epochs is not None:
        raise ValueError("make_mixed_prompt_dataset: sources repeat forever (num_epochs=None)")
    if len(sources) == 1:
        ds, stats = make_prompt_dataset(sources[0][0], tokenizer, cfg, process_index, process_count)
        return ds, [stats]
    shares = [float(s) for _, s in sources]
    if any(not s > 0 for s in shares):
        raise ValueError(f"make_mixed_prompt_dataset: every source needs a share > 0, got {shares}")
    parts = [make_prompt_dataset(examples, tokenizer, dataclasses.replace(cfg, seed=cfg.seed + i),
                                 process_index, process_count, batched=False)
             for i, (examples, _) in enumerate(sources)]
    mixed = grain.MapDataset.mix([ds for ds, _ in parts], weights=shares)
    return _batch_prompts(mixed, tokenizer.pad_id, cfg), [stats for _, stats in parts]


def encode_prompt(tokenizer: Tokenizer, template: str, example: dict, add_bos: bool) -> list[int]:
    ids = tokenizer.encode(templates.render_prompt(template, example["question"]))
    if add_bos:
        ids = [_bos(tokenizer)] + ids
    return ids


def collate_prompts(
    items: Sequence[tuple[np.ndarray, dict]], pad_id: int, max_len: int, buckets: tuple[int, ...] = ()
) -> PromptBatch:
    lens_b = np.asarray([len(t) for t, _ in items], np.int32)
    width = max_len if not buckets else min(b for b in buckets if b >= lens_b.max())
    tokens_bp = np.full((len(items), width), pad_id, np.int32)
    for b, (t, _) in enumerate(items):
        tokens_bp[b, : len(t)] = t
    return PromptBatch(tokens_bp=tokens_bp, lens_b=lens_b, examples=[e for _, e in items])


# ---------------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------------

_TRUNCATION = ("truncate", "skip", "fail")
RAW_TEXT = "raw"  # SFT template for pretraining: example["text"] as it is, loss on every token


@dataclasses.dataclass(frozen=True)
class SFTPipelineConfig:
    batch_size: int  # rows per step, on every process
    seq_len: int  # tokens per row
    template: str = "r1"  # a prompt template (templates.TEMPLATES), or RAW_TEXT for free text
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    pack: bool = True  # first-fit packing of several examples per row (segment ids keep them apart)
    # An example longer than seq_len: "truncate" cuts the response (the prompt is kept whole; an
    # example whose prompt leaves no room for a response token is skipped and logged), "skip" drops
    # it with a warning naming it, "fail" raises. Skips are counted in SFTStats.
    truncation: str = "truncate"
    add_bos: bool = False
    add_eos: bool = True  # EOS ends the response and is trained on: the model must learn to stop

    def __post_init__(self):
        if self.truncation not in _TRUNCATION:
            raise ValueError(f"SFTPipelineConfig.truncation={self.truncation!r}; choose one of {_TRUNCATION}")
        if self.template != RAW_TEXT:
            templates.render_prompt(self.template, "")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["tokens_bl", "loss_mask_bl", "segment_ids_bl", "positions_bl"], meta_fields=[])
@dataclasses.dataclass
class SFTBatch:
    """One SFT batch; a pytree, so it is sharded and fed to the jitted step as it is."""

    tokens_bl: np.ndarray  # int32 [B, L]; pad_id after the last segment
    loss_mask_bl: np.ndarray  # int32 [B, L]: 1 where tokens_bl[b, t] is a response token (a target)
    segment_ids_bl: np.ndarray  # int32 [B, L]: 1, 2, ... per packed example; 0 = padding
    positions_bl: np.ndarray  # int32 [B, L]: restart at 0 in every segment


@dataclasses.dataclass
class SFTStats:
    """Counts since the dataset was built, in this process (not part of the checkpointed state)."""

    truncated: int = 0
    skipped: int = 0


def tokenize_sft(tokenizer: Tokenizer, cfg: SFTPipelineConfig, example: dict, row: int = 0) -> dict | None:
    """{"tokens", "loss_mask", "truncated"}, or None when the example is skipped (see truncation).
    The prompt and the response are tokenised separately, so the mask boundary is exact."""
    if cfg.template == RAW_TEXT:
        if not isinstance(example.get("text"), str):
            raise example_error(example, row, f"text example {example.get('id')!r} has no text field 'text'")
        example = {**example, "question": "", "response": example["text"]}
    for field in ("question", "response"):
        if not isinstance(example.get(field), str):
            reason = f"SFT example {example.get('id')!r} has no text field {field!r}"
            raise example_error(example, row, reason)
    if cfg.template == RAW_TEXT:
        prompt, response = "", example["response"]
    else:
        prompt, response = templates.render_example(cfg.template, example["question"], example["response"])
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    if cfg.add_bos:
        prompt_ids = [_bos(tokenizer)] + prompt_ids
    response_ids = tokenizer.encode(response) + ([tokenizer.eos_id] if cfg.add_eos else [])
    n = len(prompt_ids) + len(response_ids)
    truncated = n > cfg.seq_len
    if truncated:
        err = example_error(example, row, f"SFT example {example.get('id')!r} is {n} tokens "
                            f"({len(prompt_ids)} prompt), over seq_len={cfg.seq_len}")
        if cfg.truncation == "fail":
            raise err
        if cfg.truncation == "skip" or len(prompt_ids) >= cfg.seq_len:
            log.warning("skipping: %s", err)
            return None
        response_ids = response_ids[: cfg.seq_len - len(prompt_ids)]
    tokens = np.asarray(prompt_ids + response_ids, np.int32)
    loss_mask = np.concatenate([np.zeros(len(prompt_ids), np.int32), np.ones(len(response_ids), np.int32)])
    return {"tokens": tokens, "loss_mask": loss_mask, "truncated": truncated}


def make_sft_dataset(
    examples: Sequence[dict],
    tokenizer: Tokenizer,
    cfg: SFTPipelineConfig,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[grain.IterDataset, SFTStats]:
    """Dataset of SFTBatch (an IterDataset: packing consumes a variable number of examples per row; its
    iterator state is still a JSON-able dict). By default every process builds the same global batches
    (as for prompts): packing then never lets hosts disagree on the number of steps, the iterator state is
    one state, and each process places only its own devices' rows (multihost.put).
    process_index/count given: process i packs only the examples i::count."""
    if process_index is None or process_count is None:
        process_index, process_count = 0, 1
    stats = SFTStats()
    pad_id, L = tokenizer.pad_id, cfg.seq_len

    def prepare(row: int) -> dict | None:
        out = tokenize_sft(tokenizer, cfg, examples[row], row)
        if out is None:
            stats.skipped += 1
            return None
        stats.truncated += int(out.pop("truncated"))
        return out

    ds = grain.MapDataset.source(list(range(process_index, len(examples), process_count)))
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs).map(prepare).to_iter_dataset().filter(lambda x: x is not None)
    if cfg.pack:
        ds = grain.experimental.FirstFitPackIterDataset(
            ds, length_struct={"tokens": L, "loss_mask": L}, num_packing_bins=cfg.batch_size,
            shuffle_bins=False, padding_struct={"tokens": pad_id, "loss_mask": 0},
        )
        ds = ds.map(lambda r: {"tokens": r["tokens"], "loss_mask": r["loss_mask"],
                               "segment_ids": r["tokens_segment_ids"], "positions": r["tokens_positions"]})
    else:
        ds = ds.map(lambda r: _pad_row(r, L, pad_id))
    # the last batch is topped up with empty rows (segment 0, no loss): every batch has the same shape,
    # one compiled step, rows that divide the mesh
    ds = ds.batch(cfg.batch_size, drop_remainder=False,
                  batch_fn=lambda rows: _collate_sft(list(rows) + [_pad_row({"tokens": np.zeros(0, np.int32),
                                                                            "loss_mask": np.zeros(0, np.int32)},
                                                                           L, pad_id)] * (cfg.batch_size - len(rows))))
    return ds, stats


def _pad_row(r: dict, L: int, pad_id: int) -> dict:
    n = len(r["tokens"])
    tokens = np.full(L, pad_id, np.int32)
    tokens[:n] = r["tokens"]
    loss_mask = np.zeros(L, np.int32)
    loss_mask[:n] = r["loss_mask"]
    segment_ids = (np.arange(L) < n).astype(np.int32)
    positions = np.where(segment_ids == 1, np.arange(L), 0).astype(np.int32)
    return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}


def _collate_sft(rows: Sequence[dict]) -> SFTBatch:
    stack = lambda key: np.stack([np.asarray(r[key], np.int32) for r in rows])
    return SFTBatch(tokens_bl=stack("tokens"), loss_mask_bl=stack("loss_mask"),
                    segment_ids_bl=stack("segment_ids"), positions_bl=stack("positions"))


def _bos(tokenizer: Tokenizer) -> int:
    if tokenizer.bos_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")
    return tokenizer.bos_id


def example_error(example: dict, row: int, reason: str) -> DataError:
    """Names the file and row of an example read from a file (meta["source"]), else its position
    in the list given."""
    source = (example.get("meta") or {}).get("source")
    return DataError(source, None, reason) if source else DataError("<examples>", row, reason)
