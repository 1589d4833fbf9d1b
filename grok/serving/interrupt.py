"""Ctrl-C while the model loads or XLA compiles: exit at once with 130, cleanly.

A Python signal handler runs only when the main thread returns to the interpreter, which a
compile of minutes never does; and a KeyboardInterrupt raised into JAX's loading or
compiling leaves XLA's threads running into interpreter shutdown (a segfault or an abort, a
core file). So while `exit_on_interrupt()` is active the signal's Python handler does
nothing, and its C-level part writes the signal number to a pipe (`signal.set_wakeup_fd`),
which a watcher thread reads at once: it prints a line and ends the process with
`os._exit(128 + signal)` (130 for SIGINT), running no destructor that could crash.
Nothing is written by then that needs flushing beyond stdout and stderr, which it flushes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

_STOP = 0        # written by the guard itself when it ends (no signal has number 0)


def interrupted_exit(signum: int = signal.SIGINT) -> None:
    """Flushes stdout and stderr and ends the process now with 128 + signum."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, f"\ninterrupted ({signal.Signals(signum).name}): exiting\n".encode())
    os._exit(128 + signum)


@contextlib.contextmanager
def exit_on_interrupt(signals: tuple = (signal.SIGINT,)):
    """While active, `signals` end the process at once with 128 + the signal's number (see
    the module docstring). Only on the main thread; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in signals}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            data = os.read(read_fd, 1)
            if not data or data[0] == _STOP:
                return
            if data[0] in [int(s) for s in signals]:
                interrupted_exit(data[0])

    watcher = threading.Thread(target=watch, name="exit-on-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.write(write_fd, bytes([_STOP]))
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)
