"""Output text, token by token: incremental detokenization and stop strings.

`Detokenizer` turns a stream of token ids into text deltas without decoding the whole output
per token: it decodes only a window from the last point where the text was known complete.
Decoding the window with one token more and one token less and taking the difference gives
each piece its correct leading space (SentencePiece drops the space of a window's first piece,
the same in both decodes) and holds a token that ends inside a multi-byte character (the
decode ends in U+FFFD) until a later token completes it. The window starts inside the prompt
(`CONTEXT_TOKENS` of its last tokens) so the first output piece keeps its leading space too.

`StopStrings` finds stop strings in that text across token boundaries and holds back only the
tail that could still be the start of one. `TextStream` combines both for one request.
"""

from __future__ import annotations

from typing import Optional, Sequence

REPLACEMENT = "\ufffd"   # what a decoder makes of an incomplete UTF-8 sequence
CONTEXT_TOKENS = 4        # prompt tokens decoded before the output, for its first piece's space


class Detokenizer:
    """Text deltas of a token stream; `pending` says whether decoded text is held back."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        # A prompt ending inside a character cannot serve as context: its replacement char
        # would turn into the character once output bytes complete it.
        if context and tokenizer.decode(context).endswith(REPLACEMENT):
            context = []
        self.ids = context
        self.start = 0                 # the window's first id
        self.complete = len(context)   # ids[:complete] are already turned into text
        self.pending = False

    def add(self, token_id: int) -> str:
        """The text `token_id` completes ("" while it ends inside a character)."""
        self.ids.append(int(token_id))
        before = self.tokenizer.decode(self.ids[self.start:self.complete])
        after = self.tokenizer.decode(self.ids[self.start:])
        if after.endswith(REPLACEMENT):
            self.pending = True
            return ""
        self.start, self.complete, self.pending = self.complete, len(self.ids), False
        return after[len(before):]

    def flush(self) -> str:
        """The held text, replacement characters included (the output ends here)."""
        if not self.pending:
            return ""
        before = self.tokenizer.decode(self.ids[self.start:self.complete])
        after = self.tokenizer.decode(self.ids[self.start:])
        self.start, self.complete, self.pending = self.complete, len(self.ids), False
        return after[len(before):]


class StopStrings:
    """Finds the first stop string in a text that arrives in pieces."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.held = ""     # the tail that could still be the start of a stop string

    def feed(self, text: str) -> tuple[str, Optional[str]]:
        """(text safe to release, the stop string found or None). After a stop string is
        found, the text from it on is never released."""
        if not self.stops:
            return text, None
        buffer = self.held + text
        found = [(buffer.find(s), s) for s in self.stops]
        found = [(at, s) for at, s in found if at >= 0]
        if found:
            at, stop = min(found, key=lambda f: (f[0], -len(f[1])))
            self.held = ""
            return buffer[:at], stop
        keep = self._open_prefix(buffer)
        self.held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], None

    def _open_prefix(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class TextStream:
    """One request's output text: `add(token) -> (released text, stop string or None)`."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stops: Sequence[str]):
        self.detokenizer = Detokenizer(tokenizer, prompt_ids)
        self.stops = StopStrings(stops)
        self.text = ""              # everything released so far

    def add(self, token_id: int) -> tuple[str, Optional[str]]:
        released, stop = self.stops.feed(self.detokenizer.add(token_id))
        self.text += released
        return released, stop

    @property
    def holding(self) -> bool:
        """Whether text made so far is not released yet."""
        return self.detokenizer.pending or bool(self.stops.held)

    def finish(self) -> tuple[str, Optional[str]]:
        """Releases what is held: the output ends (a stop string may still complete in the
        held text: then it is returned, as `add` does)."""
        released, stop = self.stops.feed(self.detokenizer.flush())
        if stop is None:
            released += self.stops.flush()
        self.text += released
        return released, stop
