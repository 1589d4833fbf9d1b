"""Tokenizers: the Grok-1 SentencePiece model, and a byte tokenizer for the embedded demo.

Both give `encode(text) -> list[int]` (no BOS, as the reference) and `decode(ids) -> str`.
"""

from __future__ import annotations

import os
from typing import Sequence


class SentencePieceTokenizer:
    def __init__(self, path: str | os.PathLike):
        import sentencepiece

        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model {os.fspath(path)!r} not found")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=os.fspath(path))
        self.vocab_size = self.processor.vocab_size()

    def encode(self, text: str) -> list[int]:
        return list(self.processor.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self.processor.decode(ids)


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids: 0 pad, 1 bos, 2 eos, 3.. = bytes 0..255."""

    NUM_SPECIAL = 3
    vocab_size = 256 + NUM_SPECIAL

    def encode(self, text: str) -> list[int]:
        return [b + self.NUM_SPECIAL for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self.NUM_SPECIAL for i in ids
                     if self.NUM_SPECIAL <= int(i) < self.vocab_size)
        return data.decode("utf-8", errors="replace")


def load_tokenizer(path: str | os.PathLike | None):
    """The SentencePiece model at `path`, or the byte tokenizer when path is None."""
    return ByteTokenizer() if path is None else SentencePieceTokenizer(path)
