"""`--interactive`: a REPL over one running conversation.

Each line extends the conversation and the model continues it, its text printed as it comes.
Ctrl-C stops the answer being written and returns to the prompt with the conversation kept
(the tokens streamed so far stay in it); Ctrl-C at the prompt abandons the line. On a
terminal `readline` gives line editing and history (kept in ~/.grok_history, or
$GROK_HISTORY). Bytes that are not UTF-8 are replaced, not fatal.

The conversation is kept as token ids: the last turn's prompt ids + the ids the model
sampled, then the new line's ids (a newline and the line, `encode_continuation`). Re-encoding
the conversation's text would not always give back the sampled ids (a tokenizer may merge
the answer's last piece with the next line's first), and then the prompt would leave the
prefix cache's entry (the last prompt and answer, grok.serving.scheduler "Output KV") at the
old prompt's end; with ids, each turn prefills only its new line. What is printed is
unchanged. An answer that ended on a stop string keeps its sampled ids, the stop string's
token included (the model's own text; only the display cuts it). A stopped (Ctrl-C) answer
keeps the ids of the tokens streamed before the interrupt, not the few more the scheduler
made before the cancel reached it (the conversation holds what was shown); it is not kept in
the prefix cache (cancelled), so the next turn prefills it again.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from grok.cli.inputs import make_request
from grok.loading import UsageError
from grok.cli.output import RunStats
from grok.serving.requests import Cancel
from grok.serving.results import Completion, TokenEvent

PROMPT = ">>> "
HISTORY_FILE = "~/.grok_history"     # earlier sessions' lines, for the up arrow
HISTORY_ENV = "GROK_HISTORY"         # another file for them
HISTORY_LINES = 1000
HELP = """Each line continues the conversation; the model's answer is printed as it is written.
  /help    this text
  /clear   forget the conversation
  /exit    quit (also Ctrl-D)
  Ctrl-C   stop the answer being written (the conversation is kept)"""
COMMANDS = ("/help", "/clear", "/exit")
# Text encoded before a later line and cut off again (see `encode_continuation`): one plain
# letter, a token of its own in any vocabulary that splits text at newlines.
ANCHOR_TEXT = "a"


def encode_continuation(tokenizer, text: str) -> list:
    """The ids of `text` as it continues a conversation: without the start-of-text marks a
    tokenizer adds to what it encodes alone (SentencePiece's "dummy prefix", a lone "▁" before
    a leading newline, which the conversation's text would not hold there). Encodes
    ANCHOR_TEXT + text and drops the anchor's ids; when the two merge (a tokenizer joining
    them into one piece), the text's own ids."""
    anchor = tokenizer.encode(ANCHOR_TEXT)
    ids = tokenizer.encode(ANCHOR_TEXT + text)
    if ids[:len(anchor)] == anchor and len(ids) > len(anchor):
        return ids[len(anchor):]
    return tokenizer.encode(text)


class Repl:
    def __init__(self, runner, args, stdin, stats: RunStats):
        self.runner, self.args, self.stdin, self.stats = runner, args, stdin, stats
        self.tty = stdin.isatty()
        self.gen = None
        self.turn = 0
        self.conversation: list[int] = []   # token ids so far: prompts and sampled answers
        self.budget = runner.config.sequence_len - args.max_tokens   # context that fits
        if self.budget < 1:
            raise UsageError(f"--max-tokens {args.max_tokens} leaves no room for context in "
                             f"sequence_len {runner.config.sequence_len}")
        self.history_file = None
        if self.tty and stdin is sys.stdin:
            self._load_history()
        # stdin is any text stream here (tests pass a StringIO, which has no reconfigure)
        if hasattr(stdin, "reconfigure"):
            stdin.reconfigure(errors="replace")   # a stray non-UTF-8 byte becomes U+FFFD

    def _load_history(self) -> None:
        """Line editing and history for input() (readline), with earlier sessions' lines."""
        try:
            import readline
        except ImportError:
            return
        self.history_file = os.environ.get(HISTORY_ENV) or os.path.expanduser(HISTORY_FILE)
        readline.set_history_length(HISTORY_LINES)
        try:
            readline.read_history_file(self.history_file)
        except OSError:   # none yet, or unreadable: start empty
            pass

    def _save_history(self) -> None:
        if self.history_file is None:
            return
        import readline

        try:
            readline.write_history_file(self.history_file)
        except OSError:   # a read-only home: history is a convenience, not worth an error
            pass

    def _start(self) -> None:
        self.gen = self.runner.run()
        next(self.gen)

    def _read_line(self) -> Optional[str]:
        """The next line without its newline; None at end of input."""
        try:
            if self.tty and self.stdin is sys.stdin:
                line = input(PROMPT)
            else:
                if self.tty:
                    print(PROMPT, end="", file=sys.stderr, flush=True)
                line = self.stdin.readline()
                if not line:
                    return None
        except EOFError:
            return None
        except UnicodeDecodeError:
            print("(that line was not valid UTF-8; ignored)", file=sys.stderr)
            return ""
        # lone surrogates (undecodable input) become '?', so the tokenizer never sees them
        return line.rstrip("\n").encode("utf-8", "replace").decode("utf-8")

    def run(self) -> int:
        self._start()
        print("Interactive: each line continues the conversation; /help lists commands, "
              "Ctrl-C stops an answer, /exit or Ctrl-D quits.", file=sys.stderr)
        while True:
            try:
                line = self._read_line()
            except KeyboardInterrupt:      # at the prompt: abandon the line
                print("", file=sys.stderr)
                continue
            command = (line or "").strip()
            if line is None or command == "/exit":
                if line is None and self.tty:
                    print("", file=sys.stderr)    # end the prompt's line
                self._save_history()
                self.gen.close()
                return 0
            if command == "/clear":
                self.conversation = []
                print("(conversation cleared)", file=sys.stderr)
                continue
            if command == "/help":
                print(HELP, file=sys.stderr)
                continue
            if command.startswith("/") and command.split()[0] not in COMMANDS \
                    and len(command.split()) == 1:
                print(f"unknown command {command}; /help lists them", file=sys.stderr)
                continue
            if not command:
                continue
            tokenizer = self.runner.tokenizer
            new = (encode_continuation(tokenizer, f"\n{line}") if self.conversation
                   else tokenizer.encode(line))
            self.conversation = self._answer(self.conversation + new)

    def _answer(self, conversation: list) -> list:
        """Prints the model's continuation of `conversation` (token ids) as it comes; returns
        the conversation's ids after it: the prompt sent and the answer's sampled ids."""
        ids = conversation[-self.budget:]    # recent context that fits
        try:
            request = make_request({"prompt_ids": ids}, self.args, self.turn)
        except ValueError as e:
            print(f"Error: {e}", flush=True)
            return conversation
        self.turn += 1
        printed, shown_ids = [], []      # text printed, ids of the events it came from
        stats = RunStats(*((self.stats.load_s, self.stats.compile_s) if self.turn == 1 else ()))
        stats.begin(1, self.runner.batch_size)
        try:
            out = self.gen.send(request)
            while isinstance(out, TokenEvent):
                if not printed:
                    stats.on_first_token()
                text = out.text     # final: the scheduler holds back a possible stop string
                printed.append(text)
                shown_ids.append(out.token_id)
                print(text, end="", flush=True)
                out = next(self.gen)
        except KeyboardInterrupt:
            stats.close()
            self._cancel(request.request_id)
            print("", flush=True)
            print("(stopped)", file=sys.stderr, flush=True)
            return ids + shown_ids
        print("", flush=True)
        answer = shown_ids
        if isinstance(out, Completion):
            stats.on_result(out)
            if out.error is not None:
                print(f"Error: {out.error}", flush=True)
            else:
                answer = list(out.output_ids)
        if not self.args.quiet:
            print(stats.summary(), file=sys.stderr, flush=True)
        return ids + answer

    def _cancel(self, request_id: str) -> None:
        """Ends `request_id`: through the scheduler's Cancel when the generator survived the
        interrupt and has one, else by starting a fresh generator (slots empty)."""
        if self.gen.gi_frame is not None:
            try:
                out = self.gen.send(Cancel(request_id))
                while out is not None and not (isinstance(out, Completion)
                                               and out.request_id == request_id):
                    out = next(self.gen)
                return
            except KeyboardInterrupt:
                pass
        self.gen.close()
        self._start()
