"""Tokenizers: the Grok-1 SentencePiece model, and a byte tokenizer for the embedded demo.

Both implement `Tokenizer`: `encode(text) -> list[int]` (no BOS, as the reference),
`decode(ids) -> str`, `min_tokens(text) -> int`: a lower bound on `len(encode(text))` found
without tokenizing, so a prompt far too long for the model is refused before it is tokenized,
`token_text(id)`: one token's own text for logprobs, `fingerprint`: a string naming the
exact vocabulary, and `special_tokens`: role ("bos", "eos", "pad") -> (id, the token's own
text), for the tokenizer endpoints.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from typing import Protocol, Sequence, runtime_checkable

# NFKC (SentencePiece's normalizer) may compose up to 3 alphanumeric code points into one
# (Hangul jamo L+V+T -> a syllable); it never removes an alphanumeric one.
NFKC_MAX_COMPOSITION = 3
SENTENCEPIECE_SPACE = "\u2581"   # SentencePiece's visible space at the start of a piece


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids for one vocabulary: what serving calls on a tokenizer."""

    vocab_size: int

    @property
    def fingerprint(self) -> str:
        """Names the exact vocabulary (the processes of a multi-host job compare it)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special ids and ids outside the vocabulary add nothing)."""

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)), found without tokenizing."""

    def token_text(self, token_id: int) -> str:
        """One token's own text as logprobs show it (a SentencePiece piece with its leading
        space; a byte that is not a whole UTF-8 character as `bytes:\\xNN`)."""

    @property
    def special_tokens(self) -> dict[str, tuple[int, str]]:
        """Role ("bos", "eos", "pad") -> (id, the token's own text)."""


class SentencePieceTokenizer:
    def __init__(self, path: str | os.PathLike):
        import sentencepiece

        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model {os.fspath(path)!r} not found")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=os.fspath(path))
        self.vocab_size = self.processor.vocab_size()

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names this exact model (a hash of its serialized proto): the processes of a
        multi-host job compare it, since each applies stop strings with its own copy."""
        digest = hashlib.sha256(self.processor.serialized_model_proto()).hexdigest()[:16]
        return f"sentencepiece:{digest}"

    def encode(self, text: str) -> list[int]:
        return list(self.processor.encode(text))

    @functools.cached_property
    def special_tokens(self) -> dict[str, tuple[int, str]]:
        p = self.processor
        ids = {"bos": p.bos_id(), "eos": p.eos_id(), "pad": p.pad_id()}
        return {role: (i, p.id_to_piece(i)) for role, i in ids.items() if i >= 0}

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.processor.decode(ids)

    @functools.cached_property
    def longest_piece(self) -> int:
        """Characters in the longest vocabulary piece (16 for Grok-1's)."""
        return max(len(self.processor.id_to_piece(i)) for i in range(self.vocab_size))

    def token_text(self, token_id: int) -> str:
        if self.processor.is_byte(token_id):     # "<0xNN>", vLLM's form
            return f"bytes:\\x{self.processor.id_to_piece(token_id)[3:5].lower()}"
        return self.processor.id_to_piece(token_id).replace(SENTENCEPIECE_SPACE, " ")

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)): each alphanumeric character survives
        normalization (up to NFKC_MAX_COMPOSITION of them merged into one) and a token covers
        at most `longest_piece` characters. Whitespace and controls are not counted (the
        normalizer may drop them)."""
        visible = sum(map(str.isalnum, text))
        return math.ceil(visible / (NFKC_MAX_COMPOSITION * self.longest_piece))


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids: 0 pad, 1 bos, 2 eos, 3.. = bytes 0..255."""

    NUM_SPECIAL = 3
    vocab_size = 256 + NUM_SPECIAL
    fingerprint = "bytes"
    special_tokens = {"pad": (0, "<pad>"), "bos": (1, "<s>"), "eos": (2, "</s>")}

    def encode(self, text: str) -> list[int]:
        return [b + self.NUM_SPECIAL for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.NUM_SPECIAL for i in ids
                     if self.NUM_SPECIAL <= int(i) < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        if not self.NUM_SPECIAL <= token_id < self.vocab_size:
            return ""
        byte = token_id - self.NUM_SPECIAL   # ASCII is itself; any other byte is no character
        return chr(byte) if byte < 0x80 else f"bytes:\\x{byte:02x}"

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)): every character is at least one byte."""
        return len(text)


def load_tokenizer(path: str | os.PathLike | None):
    """The SentencePiece model at `path`, or the byte tokenizer when path is None."""
    return ByteTokenizer() if path is None else SentencePieceTokenizer(path)
