"""Stage: pretrain the tiny base model of the CPU runs (R1-Zero needs a *base* model, paper §2.2).

  corpus (data/base_corpus.py, without any prompt of the RL task) ─▶ SentencePiece tokenizer
  ─▶ packed free text through the shared SFT path (trainer/supervised.py) ─▶ checkpoints

Reads config sections seed, mesh, model (the architecture), trainer, data (the RL task, whose train
and eval prompts are kept out of the corpus) and pretrain. Writes a stage workdir (policy.json,
tokenizer/, checkpoints/, metrics.jsonl): a policy source (`policy.source=workdir`) for any later
stage. Run again on a finished workdir it does nothing; on an unfinished one it resumes.
"""

from __future__ import annotations

import dataclasses
import os
import time

from r1jax import console, fileio
from r1jax.data.base_corpus import CorpusConfig, generate_corpus
from r1jax.data.pipeline import RAW_TEXT, SFTPipelineConfig, make_sft_dataset
from r1jax.data.sources import TaskSpec, load_splits
from r1jax.data.tokenizer import SentencePieceTokenizer, load_tokenizer, save_tokenizer
from r1jax.model import ModelConfig, create_sharded
from r1jax.parallel.mesh import MeshConfig
from r1jax.trainer import config as C
from r1jax.trainer.nll import nll_objective
from r1jax.trainer.optimizer import OptimConfig, make_optimizer
from r1jax.trainer.policy import TOKENIZER_DIR, Policy
from r1jax.trainer.session import Session
from r1jax.trainer.state import split_model_state
from r1jax.trainer.step import StepConfig, make_train_step
from r1jax.trainer.supervised import FitSpec, fit

CONFIG_SECTIONS = {"pretrain": CorpusConfig}
FIELD_DOCS = {
    "pretrain.tokenizer_vocab": "SentencePiece vocabulary size of the tokenizer trained on the corpus",
    "pretrain.seq_len": "tokens per packed row",
    "pretrain.batch_size": "rows per step",
    "pretrain.steps": "pretraining steps (the corpus repeats, reshuffled every epoch)",
    "pretrain.learning_rate": "peak learning rate (warmup, then cosine decay)",
    "pretrain.warmup_steps": "linear warmup steps (at most a tenth of the steps)",
    "pretrain.weight_decay": "AdamW weight decay on matrices",
    "pretrain.checkpoint_every": "save every this many steps (default: only at the end)",
}


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    seed: int
    mesh: MeshConfig
    model: C.ModelSpec
    step: StepConfig
    task: TaskSpec
    corpus: CorpusConfig
    tokenizer_vocab: int
    data: SFTPipelineConfig
    optim: OptimConfig
    steps: int
    checkpoint_every: int


def build(c) -> PretrainSpec:
    p = C.section(c, "pretrain")
    steps = p.pop("steps")
    C.require(steps >= 1, "pretrain.steps", f"must be >= 1, got {steps}")
    corpus_fields = {f.name for f in dataclasses.fields(CorpusConfig)} - {"seed", "difficulty"}
    optim = {k: p.pop(k) for k in ("learning_rate", "warmup_steps", "weight_decay") if k in p}
    optim["warmup_steps"] = min(optim.get("warmup_steps", 0), steps // 10)
    spec = PretrainSpec(
        seed=int(c.seed), mesh=C.mesh_config(c), model=C.model_spec(c), step=C.step_config(c),
        task=C.task_spec(c, int(c.seed)),
        corpus=C.build(CorpusConfig, "pretrain", seed=1000 + int(c.seed), difficulty=c.data.difficulty,
                       **{k: p.pop(k) for k in list(p) if k in corpus_fields}),
        tokenizer_vocab=p.pop("tokenizer_vocab"),
        data=C.build(SFTPipelineConfig, "pretrain", batch_size=p.pop("batch_size"), seq_len=p.pop("seq_len"),
                     template=RAW_TEXT, seed=int(c.seed), num_epochs=None, truncation="truncate"),
        optim=C.build(OptimConfig, "pretrain", total_steps=steps, **optim),
        steps=steps, checkpoint_every=p.pop("checkpoint_every", steps),
    )
    C.require(not p, f"pretrain.{next(iter(p), '')}", "unknown field")
    spec.model.resolve()  # the architecture must build (its vocabulary comes from the tokenizer)
    return spec


def run(spec: PretrainSpec, workdir: str) -> str:
    """Pretrains into `workdir` (or finds it done); returns the workdir, a policy source."""
    fileio.makedirs(workdir)
    with Session(workdir, spec.mesh, keep=1) as session:
        if session.start_step >= spec.steps:
            console.say("base", f"already pretrained ({spec.steps} steps) in {workdir}")
            return workdir

        # ── corpus and tokenizer (deterministic: a resumed run regenerates the same corpus) ───────
        train, evals, _ = load_splits(spec.task)
        t0 = time.time()
        docs = generate_corpus(spec.corpus, exclude_questions=[e["question"] for e in train + evals])
        tok_dir = os.path.join(workdir, TOKENIZER_DIR)
        if fileio.isdir(tok_dir):
            tokenizer = load_tokenizer(tok_dir)
        else:
            # BPE across whitespace and punctuation: the corpus's fixed R1-Zero instruction becomes a few
            # long pieces (prompt ~30 tokens instead of ~90), which cuts rollout and update cost ~2x.
            # a second language's characters are rare in the corpus: the default character coverage
            # would leave them as UTF-8 byte pieces (three per Han character), which the tiny model garbles
            coverage = {"character_coverage": 1.0} if spec.corpus.language_mix_rate > 0 else {}
            tokenizer = SentencePieceTokenizer.train(
                docs, vocab_size=spec.tokenizer_vocab, split_by_whitespace=False, split_by_unicode_script=False,
                max_sentencepiece_length=512, **coverage)
            save_tokenizer(tokenizer, tok_dir)
        console.say("base", f"corpus of {len(docs):,} documents (no RL prompt among them), SentencePiece "
                            f"tokenizer of {tokenizer.vocab_size} pieces ({time.time() - t0:.1f} s)")

        # ── a fresh model and its train state ───────────────────────────────────────────────────
        model_cfg: ModelConfig = dataclasses.replace(spec.model.resolve(), vocab_size=tokenizer.vocab_size)
        graphdef, full = create_sharded(model_cfg, session.mesh, spec.seed)
        params, model_state = split_model_state(full)
        policy = Policy(model_cfg, graphdef, params, model_state, tokenizer, origin="random init")
        optimizer = make_optimizer(spec.optim, params)
        state = session.init_state(policy, optimizer, spec.seed, stage="pretrain")
        state, _, data_state = session.resume(state)

        # ── packed free text through the shared supervised loop ─────────────────────────────────
        batches = iter(make_sft_dataset([{"id": f"doc-{i}", "text": d} for i, d in enumerate(docs)], tokenizer,
                                        spec.data)[0])
        if data_state:
            batches.set_state(data_state["batches"])
        step_fn = make_train_step(graphdef, nll_objective(spec.step.logprob_chunk), optimizer, session.mesh,
                                  session.shardings, spec.step)
        t0 = time.time()
        fit(session, state, step_fn, batches, FitSpec(steps=spec.steps, checkpoint_every=spec.checkpoint_every,
                                                      desc="pretrain base"))
        console.say("base", f"pretrained {spec.steps} steps in {console.duration(time.time() - t0)}")
    return workdir
