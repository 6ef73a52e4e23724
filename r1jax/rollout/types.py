"""What crosses the rollout boundary: sampling settings in, `Rollout` out (docs/contracts.md § Rollout)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax

FINISH_STOP = 0  # an EOS id, a stop token sequence or a stop string ended the completion (and is part of it)
FINISH_LENGTH = 1  # max_new_tokens was reached first


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SamplingParams.{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How completions are drawn. Validated at construction, so a bad setting fails before any compilation.

    The sampling distribution is softmax(logits / temperature) restricted to the top_k most likely tokens,
    then to the smallest set of those whose probability reaches top_p (the order of HF transformers and vLLM),
    renormalised. temperature == 0 is greedy decoding (argmax; its sampling log-prob is 0).
    """

    temperature: float = 1.0
    """T. 0 = greedy."""
    top_p: float = 1.0
    """Nucleus mass, in (0, 1]; 1 = off."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 = off."""
    max_new_tokens: int = 256
    """Completion budget; reaching it gives finish reason FINISH_LENGTH."""
    stop_token_ids: tuple[int, ...] = ()
    """Single tokens that end a completion (EOS, <|im_end|>, ...); the stop token is part of it."""
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    """Token sequences that end a completion when the completion ends with one of them."""
    stop_strings: tuple[str, ...] = ()
    """Strings (e.g. "</answer>") that end a completion however they are tokenised (see stops.py)."""
    n: int = 1
    """G: completions per prompt; rollout row = prompt_index * n + g."""

    def __post_init__(self):
        # normalise lists to tuples so the params stay hashable (they key the compile cache)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop_sequences", tuple(tuple(s) for s in self.stop_sequences))
        if isinstance(self.stop_strings, str):
            raise TypeError("SamplingParams.stop_strings must be a sequence of strings, not one string")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"SamplingParams.temperature must be finite and >= 0 (0 = greedy), got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1] (1 = off), got {p!r}")
        if _as_int(self.top_k, "top_k") < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if _as_int(self.max_new_tokens, "max_new_tokens") < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if _as_int(self.n, "n") < 1:
            raise ValueError(f"SamplingParams.n (completions per prompt, G) must be >= 1, got {self.n}")
        for i, tok in enumerate(self.stop_token_ids):
            if _as_int(tok, f"stop_token_ids[{i}]") < 0:
                raise ValueError(f"SamplingParams.stop_token_ids[{i}] must be a token id >= 0, got {tok}")
        for i, seq in enumerate(self.stop_sequences):
            if not seq:
                raise ValueError(f"SamplingParams.stop_sequences[{i}] is empty")
            for j, tok in enumerate(seq):
                if _as_int(tok, f"stop_sequences[{i}][{j}]") < 0:
                    raise ValueError(f"SamplingParams.stop_sequences[{i}][{j}] must be >= 0, got {tok}")
        for i, s in enumerate(self.stop_strings):
            if not isinstance(s, str) or not s:
                raise ValueError(f"SamplingParams.stop_strings[{i}] must be a non-empty string, got {s!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tokens_bl", "prompt_lens_b", "completion_lens_b", "finish_reason_b", "completion_mask_bl",
                 "logp_sampling_bl", "logp_policy_bl", "routing_btlk"],
    meta_fields=["texts"],
)
@dataclasses.dataclass(frozen=True)
class Rollout:
    """G completions per prompt, row = prompt_index * G + g; arrays stay on device (sharded over batch).
    A pytree (texts as metadata), so jax.device_get / block_until_ready work on it directly.

    tokens_bl is exactly the training input of the GRPO step: prompt at [0, len_p), completion at
    [len_p, len_p + len_c), pad after. The log-prob arrays are aligned with it: entry t is
    log p(tokens_bl[t] | tokens_bl[:t]), zero outside the completion.
    """

    tokens_bl: jax.Array  # int32 [B*G, L]
    prompt_lens_b: jax.Array  # int32 [B*G]
    completion_lens_b: jax.Array  # int32 [B*G]
    finish_reason_b: jax.Array  # int32 [B*G]: FINISH_STOP or FINISH_LENGTH
    completion_mask_bl: jax.Array  # float32 [B*G, L]: 1 on completion tokens
    logp_sampling_bl: jax.Array  # float32 [B*G, L]: under the sampling distribution (after T/top-k/top-p)
    logp_policy_bl: jax.Array  # float32 [B*G, L]: under the unmodified policy (T=1, no truncation)
    texts: list[str] | None = None
    # decoded completions: cut right after the first stop string; a final stop token id (EOS) is not decoded
    routing_btlk: jax.Array | None = None
    # int32 [B*G, L, L_r, K] with record_routing (MoE models; None otherwise): the experts token t ran
    # through in the sampler, for each of the L_r = model.transformer.main_moe_layers(cfg) MoE layers of the main stack,
    # aligned with tokens_bl (rows first, like every field, so row slicing and batch sharding apply). The
    # input of the trainer's routing replay. Positions past prompt + completion hold experts 0..K-1.

    @property
    def num_rows(self) -> int:
        return self.tokens_bl.shape[0]
