"""Stop conditions as token-level automata that run on device, one table lookup per decode step.

Every stop condition is compiled on the host into a deterministic automaton over *tokens*:
  table_sv[state, token] = 2 * next_state + hit
where `hit` says a stop condition completed on this token. The decode loop carries one int32 state
per row and does `x = table[state, token]` per step: no host round trip, no window of past tokens.

* Stop token ids and stop token sequences: an Aho-Corasick automaton over the token alphabet
  (a single id is a sequence of length 1). It fires when the completion ends with any sequence.
* Stop strings: an Aho-Corasick automaton over *bytes*, lifted to tokens by running every vocabulary
  token's bytes through it. It therefore fires on every tokenisation of the string — one token, the
  string split anywhere across tokens, or the string inside a longer token (e.g. "</answer>\n") —
  with no enumeration of encodings. A token's bytes are taken in context (decode([x, i]) minus
  decode([x])), so SentencePiece's leading-space marker is included.
  Limits: byte-level tokens that are a partial UTF-8 character decode to U+FFFD through the
  Tokenizer protocol, so a stop string containing non-ASCII characters split across such tokens is
  missed on device; the host-side check in `find_stop_string` then still ends the text (and the
  sampler cuts the tokens there). ASCII stop strings (tags like "</answer>") are matched exactly.
Matching covers the completion only (a stop string in the prompt does not count), as in vLLM.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def aho_corasick(patterns: Sequence[Sequence[int]], alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """Complete DFA recognising the end of any pattern: (delta [n_states, alphabet] int32, accept [n_states]).

    State 0 is the start; delta[s, a] follows the longest suffix of (text, a) that is a pattern prefix.
    """
    children: list[dict[int, int]] = [{}]
    accept = [False]
    for pattern in patterns:
        node = 0
        for a in pattern:
            if not 0 <= a < alphabet:
                raise ValueError(f"stop pattern {list(pattern)} has symbol {a} outside [0, {alphabet})")
            if a not in children[node]:
                children[node][a] = len(children)
                children.append({})
                accept.append(False)
            node = children[node][a]
        accept[node] = True
    n = len(children)
    delta = np.zeros((n, alphabet), np.int32)
    fail = [0] * n
    queue = deque()
    for a, child in children[0].items():
        delta[0, a] = child
        queue.append(child)
    while queue:  # breadth first, so a node's failure state is complete before the node is filled
        node = queue.popleft()
        accept[node] = accept[node] or accept[fail[node]]
        delta[node] = delta[fail[node]]
        for a, child in children[node].items():
            fail[child] = delta[fail[node], a]
            delta[node, a] = child
            queue.append(child)
    return delta, np.asarray(accept)


def token_sequence_table(sequences: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Token table [n_states, V] for stop ids / stop token sequences (see module docstring)."""
    delta, accept = aho_corasick(sequences, vocab_size)
    return (2 * delta + accept[delta]).astype(np.int32)


def stop_string_table(stop_strings: Sequence[str], token_bytes: Sequence[bytes]) -> np.ndarray:
    """Token table [n_states, V] for stop strings, given each token's bytes (see module docstring)."""
    delta, accept = aho_corasick([s.encode("utf-8") for s in stop_strings], 256)
    n_states, vocab = delta.shape[0], len(token_bytes)
    lens_v = np.array([len(b) for b in token_bytes])
    bytes_vl = np.zeros((vocab, max(1, lens_v.max(initial=0))), np.uint8)
    for i, b in enumerate(token_bytes):
        bytes_vl[i, : len(b)] = np.frombuffer(b, np.uint8)
    # run all (state, token) pairs through the byte automaton in lockstep, one byte position at a time
    state_sv = np.broadcast_to(np.arange(n_states, dtype=np.int32)[:, None], (n_states, vocab)).copy()
    hit_sv = np.zeros((n_states, vocab), bool)
    for j in range(bytes_vl.shape[1]):
        cols = np.flatnonzero(lens_v > j)  # tokens still having bytes: few once j passes ~10
        moved = delta[state_sv[:, cols], bytes_vl[cols, j][None]]
        state_sv[:, cols] = moved
        hit_sv[:, cols] |= accept[moved]
    return (2 * state_sv + hit_sv).astype(np.int32)


def token_bytes(tokenizer, vocab_size: int | None = None) -> list[bytes]:
    """UTF-8 bytes each token adds to a decoded text, taken after a fixed context token so that
    SentencePiece's word-initial space is kept (decoding a lone token strips it)."""
    vocab_size = vocab_size or tokenizer.vocab_size
    context = tokenizer.encode("a")[-1]
    base = tokenizer.decode([context])
    out = []
    for i in range(vocab_size):
        text = tokenizer.decode([context, i])
        out.append((text[len(base):] if text.startswith(base) else tokenizer.decode([i])).encode("utf-8"))
    return out


def build_tables(sampling, vocab_size: int, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """The stop automata for a SamplingParams: (token-sequence table for ids + sequences, stop-string
    table). Always two tables, their state counts padded to a power of two (>= 8) with unreachable
    states, so that changing the stop settings rarely changes shapes (and never forces a recompile
    while they fit). Stop strings without a tokenizer are an error."""
    sequences = [(t,) for t in sampling.stop_token_ids] + [tuple(s) for s in sampling.stop_sequences]
    for where, seq in enumerate(sequences):
        if any(t >= vocab_size for t in seq):
            raise ValueError(f"stop token ids {seq} (stop condition {where}) are outside the vocabulary "
                             f"of size {vocab_size}")
    seq_table = token_sequence_table(sequences, vocab_size)
    if sampling.stop_strings:
        if tokenizer is None:
            raise ValueError(f"stop_strings {sampling.stop_strings} need a tokenizer to be matched")
        str_table = stop_string_table(sampling.stop_strings, token_bytes(tokenizer, vocab_size))
    else:
        str_table = np.zeros((1, vocab_size), np.int32)  # stays in state 0, never hits
    return tuple(_pad_states(t) for t in (seq_table, str_table))


def _pad_states(table_sv: np.ndarray) -> np.ndarray:
    rows = max(8, 1 << (table_sv.shape[0] - 1).bit_length())
    return np.pad(table_sv, ((0, rows - table_sv.shape[0]), (0, 0)))


def advance(tables_sv: Sequence[jax.Array], states_n: jax.Array, tokens_n: jax.Array):
    """One decode step on device: (states [n_tables, N], tokens [N]) -> (new states, hit [N] bool)."""
    new_states, hit_n = [], jnp.zeros(tokens_n.shape, bool)
    for i, table in enumerate(tables_sv):
        x_n = table[states_n[i], tokens_n]
        new_states.append(x_n >> 1)
        hit_n |= (x_n & 1).astype(bool)
    return jnp.stack(new_states), hit_n


def find_stop_string(text: str, stop_strings: Sequence[str]) -> int | None:
    """End index (exclusive) of the earliest-ending stop string in text, or None."""
    ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
    return min(ends) if ends else None
