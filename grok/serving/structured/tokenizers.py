"""Our tokenizers as llguidance tokenizers: every token id's bytes, EOS, and an encoder.

llguidance computes masks from each token's bytes. SentencePiece pieces are text with "▁" for
a space, `<0xNN>` byte pieces and control pieces ([PAD], [BOS], [EOS], [UNK]); control
pieces become special tokens (bytes starting 0xFF, llguidance's convention), so no grammar
ever emits them (EOS aside, which llguidance allows where the grammar accepts). Its encoder
must not add SentencePiece's dummy-prefix space: we encode "\\x01" + text (the control
character is one byte piece that never merges) and drop those leading pieces.

Building one costs about 1.7 s at 131,072 tokens, so each (tokenizer, vocabulary, EOS) is
built once per process, when first needed, and kept (by the tokenizer's fingerprint). Where
requests may carry a grammar (the HTTP server, grok.LLM, a run with constrained prompts:
grok.serving.runner.InferenceRunner.prebuild_grammar_tokenizer), `build_in_background` builds
it when the model starts (beside loading weights and compiling): the first constrained request
does not wait for it (or waits only for what is left, under the lock). A job that sends no
constrained request never builds it.
"""

from __future__ import annotations

import threading

import llguidance

from grok.tokenizer import ByteTokenizer, SentencePieceTokenizer

SPECIAL_PREFIX = b"\xff"      # llguidance: a token whose bytes start so is special
_SENTINEL = "\x01"            # see the module docstring
_lock = threading.Lock()


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads: eos/bos ids, token bytes, an encoder."""

    def __init__(self, tokens: list, eos: int, bos, encode):
        self.tokens, self.eos_token_id, self.bos_token_id = tokens, eos, bos
        self._encode = encode

    def __call__(self, text) -> list:
        return self._encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def _sentencepiece(tokenizer: SentencePieceTokenizer, eos: int) -> _Vocabulary:
    sp = tokenizer.processor
    tokens = []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            tokens.append(bytes([int(piece[3:-1], 16)]))
        elif sp.is_control(i) or sp.is_unknown(i):
            tokens.append(SPECIAL_PREFIX + piece.encode())
        else:
            tokens.append(piece.replace("\u2581", " ").encode())
    lead = sp.encode(_SENTINEL)

    def encode(text: str) -> list:
        ids = sp.encode(_SENTINEL + text)
        return ids[len(lead):] if ids[:len(lead)] == lead else sp.encode(text)
    return _Vocabulary(tokens, eos, sp.bos_id(), encode)


def _bytes(tokenizer: ByteTokenizer, eos: int) -> _Vocabulary:
    special = [SPECIAL_PREFIX + name for name in (b"<pad>", b"<bos>", b"<eos>")]
    tokens = special[:tokenizer.NUM_SPECIAL] + [bytes([b]) for b in range(256)]
    return _Vocabulary(tokens, eos, 1, tokenizer.encode)


# (tokenizer fingerprint, vocabulary size, EOS) -> built; a few models per process at most
_built: dict[tuple, llguidance.LLTokenizer] = {}


def _build(kind: str, tokenizer, vocab_size: int, eos: int) -> llguidance.LLTokenizer:
    vocabulary = _sentencepiece(tokenizer, eos) if kind == "sp" else _bytes(tokenizer, eos)
    wrapper = llguidance.TokenizerWrapper(vocabulary)
    return llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=eos)


def llg_tokenizer(tokenizer, vocab_size: int, eos_token: int) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of `tokenizer` for a model of `vocab_size` ids (>= the
    tokenizer's; ids past it are never allowed) and EOS id; ValueError for a tokenizer
    structured outputs do not know."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        kind = "sp"
    elif isinstance(tokenizer, ByteTokenizer):
        kind = "bytes"
    else:
        raise ValueError(f"structured outputs need the SentencePiece or byte tokenizer, "
                         f"not {type(tokenizer).__name__}")
    key = (tokenizer.fingerprint, int(vocab_size), int(eos_token))
    with _lock:      # (one build at a time; a second caller waits for it, then finds it)
        if key not in _built:
            _built[key] = _build(kind, tokenizer, *key[1:])
        return _built[key]


def build_in_background(tokenizer, vocab_size: int, eos_token: int) -> threading.Thread:
    """Starts building `llg_tokenizer(tokenizer, vocab_size, eos_token)` in a daemon thread
    (returned, started). A tokenizer structured outputs do not know builds nothing: the
    first constrained request gets the error."""
    def build():
        try:
            llg_tokenizer(tokenizer, vocab_size, eos_token)
        except ValueError:
            pass
    thread = threading.Thread(target=build, name="llguidance-tokenizer", daemon=True)
    thread.start()
    return thread
