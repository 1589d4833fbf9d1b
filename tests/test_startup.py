"""Starting and stopping as a newcomer does: a port in use, Ctrl-C while XLA compiles,
flags that cannot go together. Subprocesses of `run.py` on the demo model; every wait is
bounded."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from grok.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, "run.py")
START_TIMEOUT_S = 240        # a busy 2-core machine: importing JAX alone can take 10 s
EXIT_TIMEOUT_S = 30


def _env() -> dict:
    """The tests' environment without the session's compilation cache (tests/conftest.py):
    these tests time compiles and test the engine's own cache."""
    env = {k: v for k, v in os.environ.items()
           if k != "JAX_COMPILATION_CACHE_DIR" and not k.startswith("JAX_PERSISTENT_CACHE_")}
    return dict(env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def test_port_in_use_exits_2_before_loading(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in ([RUN_PY, "--serve"], ["-m", "grok", "serve"]):
            start = time.monotonic()
            done = subprocess.run([sys.executable, *command, "--port", str(port)], cwd=tmp_path,
                                  env=_env(), capture_output=True, text=True, timeout=60)
            elapsed = time.monotonic() - start
            assert done.returncode == 2, done.stderr
            assert f"--port {port}: cannot listen: Address already in use" in done.stderr
            assert elapsed < 2.0, f"{command}: {elapsed:.1f} s"


def test_serve_with_interactive_is_refused(capsys):
    assert main(["--serve", "--interactive"]) == 2
    assert "--interactive" in capsys.readouterr().err


def _interrupt_while_compiling(tmp_path, argv) -> tuple[int, list]:
    """Starts run.py, waits for its 'Compiling' line, sends SIGINT; (exit status, stderr)."""
    process = subprocess.Popen([sys.executable, RUN_PY, *argv], cwd=tmp_path, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr],
                     daemon=True).start()
    seen, deadline = [], time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline and not any(s.startswith("Compiling") for s in seen):
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "".join(seen)
        assert any(s.startswith("Compiling") for s in seen), "".join(seen)
        process.send_signal(signal.SIGINT)
        status = process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(0.2)          # the reader thread drains the last lines
    while not lines.empty():
        seen.append(lines.get())
    return status, seen


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--prompt", "hi", "--max-tokens", "2"], ["--serve"]],
                         ids=["run", "serve"])
def test_sigint_while_compiling_exits_130(tmp_path, argv):
    if argv == ["--serve"]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            argv = argv + ["--port", str(probe.getsockname()[1])]
    status, stderr = _interrupt_while_compiling(tmp_path, argv)
    assert status == 130, "".join(stderr[-20:])      # not -11 (SIGSEGV) or -6 (SIGABRT)
    assert "interrupted (SIGINT)" in "".join(stderr)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("core")]


def _compile_seconds(stderr: str) -> float:
    for line in stderr.splitlines():
        if line.startswith("Run summary:"):
            return float(line.split("compile ")[1].split(" s")[0])
    raise AssertionError(f"no run summary in: {stderr[-2000:]}")


@pytest.mark.slow
def test_second_start_reads_compiled_programs_from_the_cache(tmp_path):
    """The persistent compilation cache is on by default (here: GROK_COMPILE_CACHE, as a
    user's would be under ~/.cache): the second run compiles far less."""
    env = dict(_env(), GROK_COMPILE_CACHE=str(tmp_path / "cache"))
    seconds = []
    for _ in range(2):
        done = subprocess.run([sys.executable, RUN_PY, "--max-tokens", "4"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-2000:]
        seconds.append(_compile_seconds(done.stderr))
    assert os.listdir(tmp_path / "cache")
    # README: 67.0 s -> 7.4 s (11%) on a busy 2-core machine; a loose bound against noise
    assert seconds[1] <= 0.5 * seconds[0], seconds
