"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's metadata (tokenizer.ggml.* keys).

A GGUF carries no tokenizer.json, only the vocabulary, merges, token types and special ids. For
byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: Llama 3, Qwen2, SmolLM, ...) this
builds the same tokenizer transformers' GGUF converter builds: BPE over the byte alphabet, the
pre-tokenizer split named by `tokenizer.ggml.pre`, control tokens (type 3) as special tokens and
user-defined tokens (type 4) as added tokens, so they are never cut into pieces.

    tok = tokenizer_from_gguf(path)          # tokenizers.Tokenizer
    info = gguf_tokenizer_info(path)         # bos/eos/pad ids, add_bos, chat_template
"""

from __future__ import annotations

import dataclasses
import functools
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4

# Split regexes by `tokenizer.ggml.pre`, as llama.cpp's converter names them (same strings as
# transformers' GGUF converter). BYTE_LEVEL_PRE use GPT-2's byte-level regex (transformers' choice
# for them too); any other name raises rather than tokenising with a guessed split.
BYTE_LEVEL_PRE = ("default", "gpt2", "smollm")
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@dataclasses.dataclass(frozen=True)
class GGUFTokenizerInfo:
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    chat_template: str | None


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_metadata(path: str) -> dict:
    from r1jax.model.gguf_io import read_gguf_header

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return read_gguf_header(path)[0]


def gguf_tokenizer_info(path: str | os.PathLike, metadata: dict | None = None) -> GGUFTokenizerInfo:
    md = metadata if metadata is not None else _read_metadata(os.fspath(path))
    return GGUFTokenizerInfo(
        bos_id=md.get("tokenizer.ggml.bos_token_id"),
        eos_id=md.get("tokenizer.ggml.eos_token_id"),
        pad_id=md.get("tokenizer.ggml.padding_token_id"),
        unk_id=md.get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=md.get("tokenizer.chat_template"),
    )


def tokenizer_from_gguf(path: str | os.PathLike, metadata: dict | None = None) -> Tokenizer:
    """The byte-level BPE tokenizer a GGUF file describes; other tokenizer models raise."""
    path = os.fspath(path)
    md = metadata if metadata is not None else _read_metadata(path)
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: tokenizer.ggml.model={kind!r} is not supported; only byte-level BPE ('gpt2') is"
        )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if key not in md:
            raise ValueError(f"{path}: GGUF metadata key {key!r} is missing")
    tokens = md["tokenizer.ggml.tokens"]
    token_types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(token_types) != len(tokens):
        raise ValueError(
            f"{path}: tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens"
        )

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens written in plain text (rare; some converters do this for added tokens) are respelled
    # in the byte alphabet, so the BPE model and the merges agree on one spelling.
    vocab = {}
    for i, tok in enumerate(tokens):
        spelled = tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(spelled, i)
    merges = []
    for row, merge in enumerate(md["tokenizer.ggml.merges"]):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}: tokenizer.ggml.merges[{row}]={merge!r} is not two tokens")
        merges.append((parts[0], parts[1]))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in BYTE_LEVEL_PRE and pre not in PRE_TOKENIZER_SPLITS:
        raise ValueError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                         f"{sorted(BYTE_LEVEL_PRE + tuple(PRE_TOKENIZER_SPLITS))}")
    split = PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()

    # A control token spelled outside the byte alphabet is a converter mislabel; adding it would
    # grow the vocabulary past the embedding table, so it is skipped (as transformers does).
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, kind in zip(tokens, token_types)
        if kind == _CONTROL and set(t) <= alphabet
    ]
    tok.add_special_tokens(control)
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, kind in zip(tokens, token_types)
        if kind == _USER_DEFINED and t in vocab
    ]
    tok.add_tokens(user)

    info = gguf_tokenizer_info(path, md)
    if info.add_bos:
        if info.bos_id is None:
            raise ValueError(f"{path}: tokenizer.ggml.add_bos_token is set but bos_token_id is missing")
        bos = tokens[info.bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, info.bos_id)]
        )
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError(
            f"{path}: rebuilt tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, "
            f"the file lists {len(tokens)} tokens (duplicate spellings?)"
        )
    return tok
