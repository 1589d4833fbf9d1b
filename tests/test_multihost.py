"""Multi-process serving: two processes on localhost (4 CPU devices each, gloo collectives).

The fixture's prompts served by a (2, 1)-hosts x (1, 4) job must equal one process on the
(2, 4) mesh; killing a process must end the other with an error naming it; a process that
never arrives must be an error. The processes run this file as a driver (`python
tests/test_multihost.py --driver ...`), each with a hard timeout, so a hang fails the test
instead of stalling CI. The kill tests use a tiny random model and need no fixture.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESS_TIMEOUT_S = 300     # a whole driver run, startup and compiles included
LOST_PEER_LIMIT_S = 60      # the acceptance limit for reporting a killed peer
TIE_MARGIN = 0.25           # fixture README: below this top-2 gap either token is right
JOB_ENV_NAMES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# ---- the driver (runs in the subprocesses) ---------------------------------------------

def _pair(text: str) -> tuple:
    data, model = (int(n) for n in text.split(","))
    return data, model


def _driver(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--fixture", help="serve this fixture's prompts; else a tiny random model")
    parser.add_argument("--mesh", type=_pair, required=True)
    parser.add_argument("--hosts", type=_pair, default=(1, 1))
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)

    from grok.parallel import multihost
    from grok.serving.multihost import follow, serve_multihost

    multihost.initialize(args.coordinator, args.num_processes, args.process_id)
    if args.fixture:
        runner = _fixture_runner(args.fixture, args.mesh, args.hosts)
    else:
        runner = _tiny_runner(args.mesh, args.hosts)
    if not multihost.is_leader():
        follow(runner)
        return
    server = serve_multihost(runner) if args.hosts != (1, 1) else runner.run()
    prompts, max_len = _fixture_prompts(args.fixture) if args.fixture else (TINY_PROMPTS, 8)
    for completion in _serve(server, prompts, max_len, args.rounds):
        print("RESULT", json.dumps({"request_id": completion.request_id,
                                    "output_ids": completion.output_ids}), flush=True)
    server.close()


def _fixture_runner(fixture: str, mesh: tuple, hosts: tuple):
    """The fixture's model in float32 activations (see the fixture README), 8+ slots."""
    from grok.config import load_config
    from grok.engine.runner import ModelRunner
    from grok.serving.runner import InferenceRunner
    from grok.runtime_config import RuntimeConfig
    from grok.tokenizer import SentencePieceTokenizer

    config = load_config(os.path.join(fixture, "config.json"))
    tokenizer_path = os.path.join(fixture, "..", "..", "grok1", "tokenizer.model")
    tokenizer = SentencePieceTokenizer(tokenizer_path)
    runtime = RuntimeConfig(activation_dtype="float32")
    runner = InferenceRunner(ModelRunner(config, bs_per_device=1, runtime=runtime), load=fixture,
                             local_mesh_config=mesh, between_hosts_config=hosts,
                             pad_sizes=(32, 128), tokenizer=tokenizer)
    runner.initialize()
    return runner


def _tiny_runner(mesh: tuple, hosts: tuple):
    """A tiny model with random weights (the same on every process) and the byte tokenizer."""
    from grok.config import LanguageModelConfig, TransformerConfig
    from grok.engine.runner import ModelRunner
    from grok.serving.runner import InferenceRunner
    from grok.runtime_config import RuntimeConfig
    from grok.tokenizer import ByteTokenizer

    config = LanguageModelConfig(
        model=TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2,
                                num_layers=1, num_experts=4, num_selected_experts=2,
                                widening_factor=2),
        vocab_size=ByteTokenizer.vocab_size, sequence_len=64)
    runtime = RuntimeConfig(activation_dtype="float32")
    runner = InferenceRunner(ModelRunner(config, bs_per_device=1, runtime=runtime),
                             local_mesh_config=mesh, between_hosts_config=hosts, pad_sizes=(16,), tokenizer=ByteTokenizer())
    runner.initialize()
    return runner


TINY_PROMPTS = ["multi", "host", "lockstep serving", "ü"]   # text: process 0 tokenizes it


def _fixture_prompts(fixture: str) -> tuple:
    with open(os.path.join(fixture, "reference_outputs.json")) as f:
        reference = json.load(f)
    return [r["prompt_ids"] for r in reference["results"]], reference["max_len"]


def _serve(server, prompts: list, max_len: int, rounds: int):
    """All `prompts` in flight at once, greedy, `rounds` times over; yields the Completions."""
    from grok.serving.requests import Request
    from grok.serving.results import Completion

    next(server)
    for round_index in range(rounds):
        requests = [Request(prompt=prompt, temperature=0.0, max_tokens=max_len,
                            request_id=f"{round_index}-{i}")
                    for i, prompt in enumerate(prompts)]
        out = server.send(requests)
        while out is not None:
            if isinstance(out, Completion):
                yield out
            out = next(server)


# ---- the tests ---------------------------------------------------------------------------

def test_decisions_cross_processes_as_json_unchanged():
    from grok.serving.decisions import Admission, Decisions, decode, encode
    from grok.serving.requests import Request

    admitted = [Admission(Request(prompt="héllo", temperature=0.7, top_p=0.9,
                                  seed=2**32 - 1, max_tokens=5, top_k=3,
                                  stop_tokens=[np.int64(7)], stop=["\n\n", "é"], stream=True,
                                  logprobs=True, echo=True, request_id="a", ignore_eos=True,
                                  min_tokens=2), "a"),
                Admission(Request(prompt=np.arange(3, 9, dtype=np.int32)), "req-1")]
    decisions = Decisions(admitted, ["b", "c"])
    assert decode(encode(decisions)) == decisions
    assert decode(encode(Decisions([], []))) == Decisions([], [])


@pytest.fixture
def no_job_env(monkeypatch):
    """No multi-process settings in the environment; tests set what they need."""
    from grok.parallel import multihost

    for name in multihost.ENV_COORDINATOR + multihost.ENV_NUM_PROCESSES + multihost.ENV_PROCESS_ID:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_come_from_flags_then_the_environment(no_job_env):
    from grok.parallel.multihost import resolve

    monkeypatch = no_job_env
    assert resolve() is None                                  # a single-process run
    assert resolve("10.0.0.1:1234", 4, 3) == ("10.0.0.1:1234", 4, 3)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("GROK_NUM_PROCESSES", "2")
    monkeypatch.setenv("GROK_PROCESS_ID", "1")
    assert resolve() == ("h:1", 2, 1)
    assert resolve(process_id=0) == ("h:1", 2, 0)             # a flag beats the environment
    with pytest.raises(ValueError, match="GROK_NUM_PROCESSES must be an int >= 1"):
        monkeypatch.setenv("GROK_NUM_PROCESSES", "two")
        resolve()
    with pytest.raises(ValueError, match="--process-id 2 must be below --num-processes 2"):
        resolve(num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="--coordinator must be HOST:PORT"):
        resolve(coordinator="no-port")


def test_a_job_without_a_coordinator_is_an_error(no_job_env):
    from grok.parallel.multihost import resolve

    with pytest.raises(ValueError, match="needs --coordinator"):
        resolve(num_processes=2, process_id=1)
    with pytest.raises(ValueError, match="--coordinator needs --num-processes"):
        resolve(coordinator="h:1", process_id=0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, name: str, args: list, env: dict) -> tuple:
    """A driver process with 4 CPU devices; its stdout and stderr go to files."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith("GROK_") and k not in JOB_ENV_NAMES}
    full_env = dict(inherited, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                    JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **env)
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--driver", *args],
                                   cwd=REPO, env=full_env, stdout=stdout, stderr=stderr)
    return process, out, err


def _wait(process, seconds: float):
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _results(path) -> dict:
    lines = [line.split(" ", 1)[1] for line in path.read_text().splitlines()
             if line.startswith("RESULT ")]
    return {r["request_id"]: r["output_ids"] for r in map(json.loads, lines)}


def _job(tmp_path, args=(), env_per_process=None):
    """Launches processes 0 and 1 of a (2, 1)-hosts job; returns [(process, out, err)].

    A process whose env names GROK_COORDINATOR (with PORT for the port) joins through the
    environment; the others through flags."""
    port = _free_port()
    launched = []
    for process_id in range(2):
        env = dict((env_per_process or {}).get(process_id, {}))
        job_args = ["--hosts", "2,1", "--mesh", "1,4", *args]
        if "GROK_COORDINATOR" in env:
            env = {k: v.replace("PORT", str(port)) for k, v in env.items()}
        else:
            job_args += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                         "--process-id", str(process_id)]
        launched.append(_launch(tmp_path, f"process{process_id}", job_args, env))
    return launched


def _kill_all(launched):
    for process, _, _ in launched:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def single_process_outputs(request):
    """request_id -> output_ids from one process on the same global mesh (2, 4)."""
    fixture = request.getfixturevalue("fixture_dir")
    runner = _fixture_runner(fixture, (2, 4), (1, 1))
    prompts, max_len = _fixture_prompts(fixture)
    return {c.request_id: c.output_ids for c in _serve(runner.run(), prompts, max_len, 1)}


def _reference(fixture_dir):
    with open(os.path.join(fixture_dir, "reference_outputs.json")) as f:
        results = json.load(f)["results"]
    logits = np.load(os.path.join(fixture_dir, "reference_logits.npz"))
    return results, logits


def _agreed_prefix(reference: dict, top_logits: np.ndarray) -> int:
    """Output positions before the reference's first tie (top-2 margin < TIE_MARGIN)."""
    prompt_len = len(reference["prompt_ids"])
    for i in range(len(reference["output_ids"])):
        top2 = np.sort(top_logits[prompt_len - 1 + i])[::-1][:2]
        if top2[0] - top2[1] < TIE_MARGIN:
            return i
    return len(reference["output_ids"])


@pytest.mark.slow
def test_two_processes_match_one_process_and_the_fixture(tmp_path, fixture_dir,
                                                         single_process_outputs):
    launched = _job(tmp_path, ["--fixture", fixture_dir])
    try:
        codes = [_wait(process, PROCESS_TIMEOUT_S) for process, _, _ in launched]
    finally:
        _kill_all(launched)
    logs = "\n".join(err.read_text()[-3000:] for _, _, err in launched)
    assert codes == [0, 0], f"exit codes {codes}\n{logs}"
    multi = _results(launched[0][1])
    assert _results(launched[1][1]) == {}, "only process 0 may print results"
    stdout = launched[0][1].read_text().splitlines()
    assert all(line.startswith("RESULT ") for line in stdout), "native prints (gloo) on stdout"

    reference, logits = _reference(fixture_dir)
    request_ids = [f"0-{i}" for i in range(len(reference))]
    assert sorted(multi) == sorted(single_process_outputs) == request_ids
    for i, ref in enumerate(reference):
        ours = multi[f"0-{i}"]
        assert ours == single_process_outputs[f"0-{i}"], f"prompt {i}: 2 processes != 1 process"
        agreed = _agreed_prefix(ref, logits[f"top_logits_{i}"])
        assert ours[:agreed] == ref["output_ids"][:agreed], f"prompt {i} differs from the fixture"


def _serve_until_killed(tmp_path, victim: int, env_per_process: dict) -> tuple:
    """A tiny-model job serving rounds of requests; kills `victim` once process 0 has printed
    results. Returns (the survivor's exit code or None if still running after
    LOST_PEER_LIMIT_S, its stderr)."""
    launched = _job(tmp_path, ["--rounds", "1000000"], env_per_process)
    (leader, leader_out, leader_err) = launched[0]
    survivor, _, survivor_err = launched[1 - victim]
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        # two rounds of results: the job is past its compiles and serving in lockstep
        while (len(_results(leader_out)) < 2 * len(TINY_PROMPTS) and leader.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.5)
        assert len(_results(leader_out)) >= 2 * len(TINY_PROMPTS), \
            f"no results:\n{leader_err.read_text()[-3000:]}"
        launched[victim][0].kill()
        code = _wait(survivor, LOST_PEER_LIMIT_S)
    finally:
        _kill_all(launched)
    return code, survivor_err.read_text()


@pytest.mark.slow
def test_killing_a_follower_makes_process_0_exit_naming_it(tmp_path):
    # Process 1 joins through environment variables, process 0 through flags.
    env = {0: {"GROK_PEER_TIMEOUT": "10"},
           1: {"GROK_COORDINATOR": "127.0.0.1:PORT", "GROK_NUM_PROCESSES": "2",
               "GROK_PROCESS_ID": "1", "GROK_PEER_TIMEOUT": "10"}}
    code, error = _serve_until_killed(tmp_path, 1, env)
    from grok.parallel.multihost import PEER_LOST_EXIT_CODE

    assert code == PEER_LOST_EXIT_CODE, f"exit code {code}:\n{error[-3000:]}"
    assert "lost peer process 1" in error


@pytest.mark.slow
def test_killing_process_0_ends_the_follower(tmp_path):
    code, error = _serve_until_killed(tmp_path, 0, {})
    assert code not in (None, 0), f"exit code {code}:\n{error[-3000:]}"
    # jax's coordination client ends a process at once when the coordinator (process 0) goes
    assert "leader task was preempted/died" in error or "lost peer process 0" in error


def test_a_process_that_never_arrives_is_an_error(tmp_path):
    args = ["--hosts", "2,1", "--mesh", "1,4", "--coordinator", f"127.0.0.1:{_free_port()}",
            "--num-processes", "2", "--process-id", "0"]
    process, _, err = _launch(tmp_path, "process0", args, {"GROK_INIT_TIMEOUT": "2"})
    try:
        code = _wait(process, LOST_PEER_LIMIT_S)
    finally:
        _kill_all([(process, None, None)])
    from grok.parallel.multihost import PEER_LOST_EXIT_CODE

    assert code == PEER_LOST_EXIT_CODE, f"exit code {code}:\n{err.read_text()[-3000:]}"
    assert "process 0 could not join the job within 2 s" in err.read_text()


def _run_py_job(tmp_path, batch_sizes):
    """`python run.py` (the demo model) as processes 0 and 1 of one job; returns their
    (exit code, stdout, stderr)."""
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("GROK_")},
               XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    port, launched = _free_port(), []
    for process_id, batch_size in enumerate(batch_sizes):
        args = ["run.py", "--mesh", "1,4", "--hosts", "2,1", "--max-len", "8", "--batch-size",
                str(batch_size), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(process_id), "--prompt", "Hello", "--prompt", "Bye"]
        out, err = tmp_path / f"run{process_id}.out", tmp_path / f"run{process_id}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            launched.append((subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                              stdout=stdout, stderr=stderr), out, err))
    try:
        # Ready: each process has compiled (run.py says "Compiled ..." on stderr) or exited;
        # startup and compiles get PROCESS_TIMEOUT_S on a loaded machine, the run itself then
        # LOST_PEER_LIMIT_S.
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while (time.monotonic() < deadline
               and not all(process.poll() is not None or "Compiled " in err.read_text()
                           for process, _, err in launched)):
            time.sleep(0.5)
        codes = [_wait(process, LOST_PEER_LIMIT_S) for process, _, _ in launched]
    finally:
        _kill_all(launched)
    return [(code, out.read_text(), err.read_text()) for code, (_, out, err) in zip(codes, launched)]


@pytest.mark.slow
def test_run_py_serves_from_process_0_only(tmp_path):
    (code0, out0, err0), (code1, out1, err1) = _run_py_job(tmp_path, [4, 4])
    assert (code0, code1) == (0, 0), err0[-2000:] + err1[-2000:]
    assert out0.count("Output for prompt:") == 2 and out1 == ""


def test_run_py_with_different_settings_fails_on_every_process(tmp_path):
    for code, _, err in _run_py_job(tmp_path, [4, 8]):
        assert code not in (0, None), err[-2000:]
        assert "process 1 was started with other settings than process 0" in err
        assert "bs_per_device" in err


if __name__ == "__main__" and sys.argv[1:2] == ["--driver"]:
    sys.path.insert(0, REPO)
    _driver(sys.argv[2:])
