"""① Data: verifiable tasks, real offline problem sets, templates, tokenizers, grain pipelines.

See docs/data.md and docs/contracts.md § Data.
"""

from r1jax.data.pipeline import (
    PromptBatch,
    PromptPipelineConfig,
    PromptStats,
    SFTBatch,
    SFTPipelineConfig,
    SFTStats,
    make_prompt_dataset,
    make_sft_dataset,
)
from r1jax.data.procedural import ProceduralConfig, ProceduralSource
from r1jax.data.readers import DataError, FieldMap, ReadStats, gsm8k_test100, humaneval, read_file
from r1jax.data.sources import SplitInfo, TaskSpec, load_splits, reasoning_gym_examples
from r1jax.data.splits import dedup, normalize_prompt
from r1jax.data.templates import REWARD_FORMAT, TEMPLATES, render_example, render_prompt
from r1jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer

__all__ = [
    "REWARD_FORMAT", "TEMPLATES", "DataError", "FieldMap", "HFTokenizer", "ProceduralConfig",
    "ProceduralSource", "PromptBatch", "PromptPipelineConfig", "PromptStats", "ReadStats",
    "SFTBatch", "SFTPipelineConfig", "SFTStats", "SentencePieceTokenizer", "SplitInfo", "TaskSpec",
    "Tokenizer", "dedup", "gsm8k_test100", "humaneval", "load_splits", "make_prompt_dataset",
    "make_sft_dataset", "normalize_prompt", "read_file", "reasoning_gym_examples", "render_example",
    "render_prompt",
]
