"""Export an r1jax model with its tokenizer as one Hugging Face directory that transformers loads:

    export_hf("/out/r1-tiny", cfg, state, tokenizer)
    # transformers.AutoModelForCausalLM.from_pretrained("/out/r1-tiny")
    # transformers.AutoTokenizer.from_pretrained("/out/r1-tiny")

Layout (docs/checkpoints.md § Export): the weights and config.json of `hf_io.save_hf` (config.json
also carries bos/eos/pad_token_id, and rope_theta / rope_scaling for transformers 4.x), the tokenizer
files of `data.tokenizer.save_tokenizer`, and a generation_config.json with the same ids. Everything
is written into a sibling `<dir>.tmp-<pid>-<hex>` and renamed into place at the end, so the final
path holds a complete export or nothing new. A remote `directory` (gs://...: no rename there) is
exported into a local temporary directory and uploaded file by file (each one atomic), config.json
last, so a reader that finds config.json finds the whole export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid

import jax

from r1jax import fileio
from r1jax.data.tokenizer import Tokenizer, save_tokenizer
from r1jax.fileio import write_atomic
from r1jax.model.config import ModelConfig
from r1jax.model.hf_io import save_hf
from r1jax.parallel import multihost

GENERATION_CONFIG_FILE = "generation_config.json"


def export_hf(directory: str | os.PathLike, cfg: ModelConfig, state, tokenizer: Tokenizer, *,
              overwrite: bool = False, max_shard_bytes: int = 4 << 30) -> None:
    """Writes model (config.json + safetensors), tokenizer and generation_config.json to `directory`.

    The tokenizer must fit the model: vocab_size <= cfg.vocab_size (a model may pad its embedding
    beyond the tokenizer) and every special id inside it. An existing `directory` is an error unless
    `overwrite`; then the old export is moved aside, the new one renamed in, and the old one
    deleted (the final path is briefly absent, never half-written). With several processes every
    process calls this (the weight gathers are collective); process 0 writes.
    """
    directory = os.fspath(directory)
    if cfg.scan_layers:  # HF names one tensor per layer: the unrolled layout
        from r1jax.model.scan import unstack_layers

        state, cfg = unstack_layers(cfg, state), dataclasses.replace(cfg, scan_layers=False)
    _check_fits(cfg, tokenizer, directory)
    exists = fileio.exists(directory)
    multihost.sync(f"export_hf checked {directory}")  # every process looks before process 0 writes
    if exists and not overwrite:
        raise _exists_error(directory)
    if fileio.is_remote(directory):
        with tempfile.TemporaryDirectory(prefix="r1jax-export-") as local:
            export_hf(os.path.join(local, "export"), cfg, state, tokenizer, max_shard_bytes=max_shard_bytes)
            if jax.process_index() == 0:
                _upload_dir(os.path.join(local, "export"), directory)
        return
    directory = os.path.abspath(directory)
    writer = jax.process_index() == 0
    tmp = f"{directory}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_hf(tmp, cfg, state, max_shard_bytes=max_shard_bytes)  # collective: every process
        if writer:
            _write_tokenizer_side(tmp, tokenizer)
            _replace_dir(tmp, directory)
    except BaseException:
        if writer and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    multihost.sync(f"export_hf {directory}")  # nobody reads the export before process 0 has renamed it into place


def check_target(directory: str | os.PathLike, overwrite: bool) -> None:
    """FileExistsError if `directory` exists and may not be replaced (before any work is done)."""
    if not overwrite and fileio.exists(os.fspath(directory)):
        raise _exists_error(os.fspath(directory))


def _exists_error(directory: str) -> FileExistsError:
    return FileExistsError(f"{directory}: already exists (overwrite=True, or `r1jax export --overwrite`, replaces it)")


def _check_fits(cfg: ModelConfig, tokenizer: Tokenizer, directory: str) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{cfg.vocab_size}; the model cannot embed its ids")
    for name in ("bos_id", "eos_id", "pad_id"):
        idx = getattr(tokenizer, name)
        if idx is not None and not 0 <= idx < cfg.vocab_size:
            raise ValueError(f"{directory}: tokenizer {name}={idx} is outside the model's vocab_size={cfg.vocab_size}")


def _write_tokenizer_side(tmp: str, tokenizer: Tokenizer) -> None:
    """Tokenizer files, the special ids in config.json (HF convention, read by pipelines and older
    transformers) and generation_config.json (what `generate` uses: stop on eos, pad with pad)."""
    save_tokenizer(tokenizer, tmp)
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    config_path = os.path.join(tmp, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(ids)
    write_atomic(config_path, (json.dumps(config, indent=2) + "\n").encode())
    write_atomic(os.path.join(tmp, GENERATION_CONFIG_FILE), (json.dumps(ids, indent=2) + "\n").encode())


def _upload_dir(local: str, directory: str) -> None:
    """Copies the files of `local` to the remote `directory`, config.json last, then deletes files
    there that the new export does not have (an overwritten export's other shards)."""
    names = sorted(os.listdir(local), key=lambda n: (n == "config.json", n))
    fileio.makedirs(directory)
    for name in names:
        with open(os.path.join(local, name), "rb") as f:
            write_atomic(os.path.join(directory, name), f.read())
    for old in fileio.as_path(directory).iterdir():
        if old.name not in names and old.is_file():
            old.unlink()


def _replace_dir(tmp: str, directory: str) -> None:
    if not os.path.exists(directory):
        os.rename(tmp, directory)
        return
    old = f"{directory}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(old, directory)  # put the previous export back
        raise
    shutil.rmtree(old)
