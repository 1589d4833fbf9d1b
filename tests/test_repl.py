"""`run.py --interactive` driven through a pseudo-terminal, as a person would: Ctrl-C stops an
answer and returns to the prompt, /help, /clear, Ctrl-D ends with a newline. One subprocess
on the demo written as a checkpoint with a long sequence_len, so an answer runs long enough
to be interrupted. Every wait is bounded."""

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from grok import demo

REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
START_TIMEOUT_S = 180        # JAX import, checkpoint load and compile on a busy 2-core machine
STEP_TIMEOUT_S = 60
LONG_SEQUENCE = 2048         # the demo never writes EOS: an answer runs to max tokens
MAX_TOKENS = 2000
SEEN_BEFORE_CTRL_C = 40      # answer characters to see before pressing Ctrl-C


class Terminal:
    """A child process on a pty; `expect` reads until a pattern shows up (bounded)."""

    def __init__(self, argv, env, cwd):
        self.master, slave = pty.openpty()
        # The wrapper (a fresh interpreter: no threads) makes the pty its controlling terminal,
        # so Ctrl-C typed into it raises SIGINT in the REPL, as in a real terminal.
        self.proc = subprocess.Popen([sys.executable, "-c", _CONTROLLING_TTY] + argv,
                                     stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd)
        os.close(slave)
        self.seen = b""

    def read_until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; the terminal shows:\n{self.text()[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:        # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the REPL ended; it showed:\n{self.text()[-3000:]}")
                self.seen += chunk

    def expect(self, pattern: bytes, timeout=STEP_TIMEOUT_S) -> int:
        """Waits for `pattern` after what was already consumed; returns where it ends."""
        start = self.mark
        self.read_until(lambda s: pattern in s[start:], timeout)
        self.mark = self.seen.index(pattern, start) + len(pattern)
        return self.mark

    mark = 0

    def send(self, data: bytes):
        os.write(self.master, data)

    def text(self) -> str:
        return self.seen.decode("utf-8", "replace")

    def exit_status(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> bool:
        return self.proc.poll() is None

    def close(self):
        if self.running():
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.master)


_CONTROLLING_TTY = """
import fcntl, os, sys, termios
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture(scope="module")
def long_demo(tmp_path_factory):
    config = demo.DEMO.replace(sequence_len=LONG_SEQUENCE)
    return demo.write_demo_checkpoint(str(tmp_path_factory.mktemp("repl") / "demo"), config)


# Slow (a run.py process compiling a model of its own): the REPL's turns, /clear, Ctrl-C and bad
# input run by default in-process (test_cli.py, test_prefix_cache.py, test_cli_errors.py); this one
# adds the real terminal, Ctrl-C's signal and readline's history.
@pytest.mark.slow
def test_repl_ctrl_c_help_clear_and_eof_through_a_terminal(long_demo, tmp_path):
    env = {k: v for k, v in os.environ.items()        # one CPU device; history in HOME
           if k not in ("XLA_FLAGS", "GROK_HISTORY")}
    env.update(JAX_PLATFORMS="cpu", TERM="dumb", HOME=str(tmp_path))
    term = Terminal([sys.executable, os.path.join(REPO_DIR, "run.py"), "--checkpoint", long_demo,
                     "--mesh", "1,1", "--pad-sizes", "128", "--interactive",
                     "--temperature", "0", "--max-tokens", str(MAX_TOKENS)], env, tmp_path)
    try:
        term.expect(b">>> ", START_TIMEOUT_S)
        term.send(b"Hello\r")
        start = term.expect(b"Hello")
        term.read_until(lambda s: len(s) - start > SEEN_BEFORE_CTRL_C, STEP_TIMEOUT_S)
        term.send(b"\x03")                                  # Ctrl-C while it answers
        term.expect(b"(stopped)")
        term.expect(b">>> ")                                # back at the prompt, alive
        assert term.running()
        term.send(b"/help\r")
        term.expect(b"/clear")
        term.expect(b">>> ")
        term.send(b"/clear\r")
        term.expect(b"(conversation cleared)")
        term.expect(b">>> ")
        term.send(b"Again\r")                               # the generator still serves
        start = term.expect(b"Again")
        term.read_until(lambda s: len(s) - start > SEEN_BEFORE_CTRL_C, STEP_TIMEOUT_S)
        term.send(b"\x03")
        term.expect(b"(stopped)")
        prompt_end = term.expect(b">>> ")
        term.send(b"\x04")                                  # Ctrl-D: quit
        assert term.exit_status(STEP_TIMEOUT_S) == 0
        term.read_until(lambda s: b"\n" in s[prompt_end:], 5)   # the newline after the prompt
        history = (tmp_path / ".grok_history").read_text()       # readline kept the lines
        assert "Hello" in history and "/clear" in history
        assert "Traceback" not in term.text()
        assert not re.search(r"\^\[\[", term.text())
    finally:
        term.close()
