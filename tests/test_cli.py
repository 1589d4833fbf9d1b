"""run.py / grok.cli: fixture parity through the command line, input formats, errors, REPL, demo.

Most tests call `grok.cli.main(argv, runner=...)` in-process with a runner built once per
module for its model flags (building compiles); one runs bare `python run.py` as a subprocess.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from grok.serving.requests import request_seed
from grok import cli, demo

REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED_DIR = os.path.join(REPO_DIR, "..", "shared")
REFERENCE_TIE_MARGIN = 0.25     # fixture README: closer top-2 logits are a legitimate tie
ECHO_MEDIAN_TOLERANCE = 0.06    # nats, median over prompt positions


@pytest.fixture(scope="module")
def shared_dir():
    if not os.path.isdir(SHARED_DIR):
        pytest.skip("../shared is absent")
    return os.path.abspath(SHARED_DIR)


@pytest.fixture(scope="module")
def tokenizer_path(shared_dir):
    path = os.path.join(shared_dir, "grok1", "tokenizer.model")
    if not os.path.isfile(path):
        pytest.skip("../shared/grok1/tokenizer.model is absent")
    return path


class RunnerCache:
    """One built runner per distinct list of model flags (building loads and compiles)."""

    def __init__(self):
        self.runners = {}

    def get(self, model_argv):
        key = tuple(model_argv)
        if key not in self.runners:
            self.runners[key] = cli.build_runner(cli.build_parser().parse_args(list(key)))
        return self.runners[key]


@pytest.fixture(scope="module")
def runners():
    return RunnerCache()


def fixture_model_argv(fixture_dir, tokenizer_path, batch_size):
    argv = ["--checkpoint", fixture_dir, "--config", os.path.join(fixture_dir, "config.json"),
            "--tokenizer", tokenizer_path, "--batch-size", str(batch_size)]
    if batch_size == 1:
        return argv             # the default mesh: (1, 8) here, the reference's, 0.125 per device
    # one 64-token bucket: a prompt's first decode step fits the shortest decode variant (128
    # of sequence_len 256), so start-up compiles one decode variant, not two
    return argv + ["--mesh", "1,1", "--pad-sizes", "64"]


def run_cli(runners, capsys, model_argv, extra_argv, stdin=None):
    """(exit status, stdout, stderr) of run.py with these flags, on a cached runner."""
    runner = runners.get(model_argv)
    capsys.readouterr()
    status = cli.main(list(model_argv) + list(extra_argv), runner=runner, stdin=stdin)
    out = capsys.readouterr()
    return status, out.out, out.err


def json_lines(text):
    return [json.loads(line) for line in text.splitlines()]


def write(path, text):
    path.write_text(text)
    return str(path)


def fixture_reference(fixture_dir):
    with open(os.path.join(fixture_dir, "reference_outputs.json")) as f:
        results = json.load(f)["results"]
    return results, np.load(os.path.join(fixture_dir, "reference_logits.npz"))


# ---- fixture parity ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 8])
def test_greedy_json_output_matches_reference(fixture_dir, tokenizer_path, runners, capsys,
                                              batch_size):
    model_argv = fixture_model_argv(fixture_dir, tokenizer_path, batch_size)
    status, out, _ = run_cli(runners, capsys, model_argv, [
        "--input-file", os.path.join(fixture_dir, "prompts.json"), "--temperature", "0",
        "--max-len", "16", "--json"])
    assert status == 0
    results, logits = fixture_reference(fixture_dir)
    printed = json_lines(out)
    assert [p["index"] for p in printed] == list(range(len(results)))
    compared = 0
    for j, (got, ref) in enumerate(zip(printed, results)):
        assert got["prompt_ids"] == ref["prompt_ids"]
        top = np.sort(logits[f"top_logits_{j}"], axis=-1)[:, ::-1]          # [T, 16] descending
        n, start = len(ref["output_ids"]), len(ref["prompt_ids"]) - 1  # start predicts output 0
        margins = top[start:start + n, 0] - top[start:start + n, 1]       # [n]
        ties = np.flatnonzero(margins < REFERENCE_TIE_MARGIN)
        until = int(ties[0]) if len(ties) else n
        assert got["output_ids"][:until] == ref["output_ids"][:until], f"prompt {j}"
        assert len(got["output_ids"]) == n and isinstance(got["text"], str)
        compared += until
    assert compared >= 16, "the reference has ties almost everywhere: nothing was compared"


@pytest.mark.slow
def test_echo_logprobs_match_reference(fixture_dir, tokenizer_path, runners, capsys, tmp_path):
    _, logits = fixture_reference(fixture_dir)
    prompts = [logits[f"tokens_{j}"].tolist() for j in range(4)]
    path = write(tmp_path / "score.jsonl",
                 "".join(json.dumps({"prompt_ids": ids}) + "\n" for ids in prompts))
    status, out, _ = run_cli(runners, capsys, fixture_model_argv(fixture_dir, tokenizer_path, 8),
                             ["--input-file", path, "--max-len", "1", "--echo-logprobs", "--json"])
    assert status == 0
    errors = []
    for j, (ids, got) in enumerate(zip(prompts, json_lines(out))):
        assert got["prompt_ids"] == ids
        assert len(got["prompt_logprobs"]) == len(ids) and got["prompt_logprobs"][0] is None
        errors.append(np.abs(np.array(got["prompt_logprobs"][1:]) - logits[f"next_logprobs_{j}"]))
    assert np.median(np.concatenate(errors)) <= ECHO_MEDIAN_TOLERANCE


# ---- inputs and outputs -----------------------------------------------------------------------

PROMPTS = ["Hello", "def fibonacci(n):", "The answer to life"]


def test_input_formats_agree_and_text_output_is_in_input_order(
        fixture_dir, tokenizer_path, runners, capsys, tmp_path):
    model_argv = fixture_model_argv(fixture_dir, tokenizer_path, 8)
    text = "\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n"      # the blank line is skipped
    jsonl = "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    mixed = json.dumps([{"prompt": p} for p in PROMPTS[:2]] + PROMPTS[2:])  # objects and strings
    files = [write(tmp_path / "p.txt", text), write(tmp_path / "p.jsonl", jsonl),
             write(tmp_path / "p.json", mixed)]
    common = ["--temperature", "0", "--max-len", "5"]
    outputs = []
    for path in files:
        status, out, _ = run_cli(runners, capsys, model_argv,
                                 common + ["--input-file", path, "--json"])
        assert status == 0
        outputs.append([(r["prompt"], r["output_ids"]) for r in json_lines(out)])
    assert [p for p, _ in outputs[0]] == PROMPTS
    assert outputs[0] == outputs[1] == outputs[2]
    status, out, _ = run_cli(runners, capsys, model_argv, common + ["--input-file", files[1]])
    assert status == 0
    texts = out.split("Output for prompt: ")[1:]
    assert [t.startswith(p + " ") for t, p in zip(texts, PROMPTS)] == [True] * 3


def test_bad_records_get_their_own_errors_and_the_rest_run(
        fixture_dir, tokenizer_path, runners, capsys, tmp_path):
    lines = ['{"prompt": "Hello", "max_len": 3, "request_id": "mine", "logprobs": true}',
             '{"prompt": "Hello", "temperature": -1}',
             '{not json',
             '{"prompt": "Hello", "temprature": 0}',
             '{"prompt_ids": [1, 999999999]}',
             '{"prompt": "Hello", "prompt_ids": [1]}',
             '"Hello"']
    path = write(tmp_path / "mixed.jsonl", "\n".join(lines) + "\n")
    status, out, _ = run_cli(runners, capsys, fixture_model_argv(fixture_dir, tokenizer_path, 8),
                             ["--input-file", path, "--max-len", "4", "--temperature", "0",
                              "--json"])
    assert status == 1
    got = json_lines(out)
    assert [r["index"] for r in got] == list(range(len(lines)))
    assert got[0]["request_id"] == "mine" and len(got[0]["output_ids"]) == 3
    assert len(got[0]["logprobs"]) == 3 and len(got[0]["top_logprobs"]) == 3
    assert "error" not in got[0] and "error" not in got[6] and len(got[6]["output_ids"]) == 4
    assert got[6]["output_ids"][:3] == got[0]["output_ids"]
    for index, words in [(1, ["temperature", "mixed.jsonl:2"]), (2, ["JSON", "mixed.jsonl:3"]),
                         (3, ["temprature"]), (4, ["vocabulary"]), (5, ["exactly one"])]:
        assert got[index]["finish_reason"] == "error"
        assert all(word in got[index]["error"] for word in words), got[index]["error"]


def test_stream(fixture_dir, tokenizer_path, runners, capsys):
    model_argv = fixture_model_argv(fixture_dir, tokenizer_path, 8)
    greedy = ["--temperature", "0", "--max-len", "6"]
    _, out, _ = run_cli(runners, capsys, model_argv, greedy + ["--prompt", "Hello", "--json"])
    text = json_lines(out)[0]["text"]
    status, out, _ = run_cli(runners, capsys, model_argv,
                             greedy + ["--prompt", "Hello", "--stream"])
    assert status == 0 and out == f"Output for prompt: Hello {text}\n"
    status, out, err = run_cli(runners, capsys, model_argv, greedy + [
        "--prompt", "Hello", "--prompt", "World", "--stream", "--json"])
    records = json_lines(out)
    assert [r["prompt"] for r in records] == ["Hello", "World"]   # stdout: JSON only
    # readable: each request's text in one piece under its header, in input order
    pieces = "".join(f"Output for prompt: {r['prompt']} {r['text']}\n" for r in records)
    assert err.startswith(pieces), err


def test_interactive_keeps_history_clears_and_exits(fixture_dir, tokenizer_path, runners, capsys,
                                                     tmp_path):
    """The conversation travels as token ids: the second turn's prompt is the first's prompt
    and sampled ids, then the new line's (grok.cli.repl.encode_continuation)."""
    from grok.cli.repl import encode_continuation

    model_argv = fixture_model_argv(fixture_dir, tokenizer_path, 8)
    greedy = ["--temperature", "0", "--max-len", "5"]

    def complete(prompt_ids):
        path = write(tmp_path / "prompt.json", json.dumps([{"prompt_ids": prompt_ids}]))
        _, out, _ = run_cli(runners, capsys, model_argv,
                            greedy + ["--input-file", path, "--json"])
        return json_lines(out)[0]

    tokenizer = runners.get(model_argv).tokenizer
    hello = tokenizer.encode("Hello")
    first = complete(hello)
    again = encode_continuation(tokenizer, "\nagain")
    second = complete(hello + first["output_ids"] + again)["text"]
    first = first["text"]
    stdin = io.StringIO("Hello\nagain\n/clear\nHello\n/exit\nnever read\n")
    status, out, err = run_cli(runners, capsys, model_argv, greedy + ["--interactive"], stdin=stdin)
    assert status == 0
    assert out == f"{first}\n{second}\n{first}\n"
    assert "/exit" in err and "cleared" in err


# ---- errors before any model is built ---------------------------------------------------------

def test_clear_errors_for_missing_checkpoint_tokenizer_and_bad_flags(
        fixture_dir, tmp_path, monkeypatch, capsys):
    config = os.path.join(fixture_dir, "config.json")
    cases = [(["--checkpoint", str(tmp_path)], "no ckpt-0"),
             (["--checkpoint", str(tmp_path / "absent")], "no such directory"),
             (["--checkpoint", fixture_dir, "--config", config], "--tokenizer"),
             (["--checkpoint", fixture_dir, "--config", config, "--tokenizer", "absent.model"],
              "absent.model: no such file"),
             (["--config", write(tmp_path / "bad.json", "{")], "--config"),
             (["--temperature", "-1"], "temperature"),
             (["--top-p", "0"], "--top-p"),
             (["--interactive", "--prompt", "x"], "--interactive"),
             (["--batch-size", "0"], "--batch-size"),
             (["--pad-sizes", "0"], "pad_sizes"),
             (["--input-file", str(tmp_path / "absent.txt")], "absent.txt")]
    monkeypatch.chdir(tmp_path)      # no ./tokenizer.model, no ./checkpoints
    for argv, words in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error" in err and words in err, (argv, err)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--mesh", "0,8"])


def test_multihost_hook(tmp_path, monkeypatch, capsys):
    from grok.parallel import multihost

    calls = []
    monkeypatch.setattr(multihost, "initialize",
                        lambda *flags: calls.append(flags) or flags[0] is not None)
    no_ckpt = ["--checkpoint", str(tmp_path)]          # stops right after joining: status 2
    assert cli.main(["--coordinator", "host:1234", "--num-processes", "2", "--process-id", "1"]
                    + no_ckpt) == 2
    assert cli.main(no_ckpt) == 2                      # the environment is grok.parallel.multihost's to read
    assert calls == [("host:1234", 2, 1), (None, None, None)]
    assert "no ckpt-0" in capsys.readouterr().err


def test_batch_size_gives_exactly_that_many_slots():
    for devices in range(1, 17):
        for batch_size in range(1, 65):
            assert int(cli.bs_per_device(batch_size, devices) * devices) == batch_size
    with pytest.raises(cli.UsageError, match="batch-size"):
        cli.bs_per_device(0, 8)


def test_make_request_fields():
    args = cli.build_parser().parse_args(["--temperature", "0.5", "--seed", "10", "--max-len", "7"])
    request = cli.make_request({"prompt": "x", "top_p": 0.9, "echo_logprobs": True}, args, 3)
    assert (request.prompt, request.temperature, request.top_p, request.seed,
            request.max_tokens, request.echo) == ("x", 0.5, 0.9, request_seed(10, 3), 7, True)
    request = cli.make_request({"prompt_ids": [5, 6], "seed": 1, "max_len": 2, "top_k": 4}, args, 0)
    assert (request.prompt, request.seed, request.max_tokens, request.top_k) == ((5, 6), 1, 2, 4)
    for record, words in [({"prompt": "x", "max_len": 1.5}, "max_len"),
                          ({"prompt": 5}, "'prompt' must be a str"),
                          ({"prompt": "x", "colour": 1}, "colour"), (["x"], "object")]:
        with pytest.raises(ValueError, match=words):
            cli.make_request(record, args, 0)


# ---- the demo ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bare_run(tmp_path_factory):
    """`python run.py` in a directory without checkpoints/: the embedded demo."""
    cwd = tmp_path_factory.mktemp("fresh")
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "run.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_bare_run_prints_a_demo_completion_and_says_weights_are_random(bare_run):
    assert bare_run.returncode == 0, bare_run.stderr
    header = f"Output for prompt: {cli.REFERENCE_PROMPT} "
    assert bare_run.stdout.startswith(header)
    completion = bare_run.stdout[len(header):].rstrip("\n")
    assert len(completion) >= 20 and all(c.isprintable() or c == "\n" for c in completion)
    assert "RANDOM weights" in bare_run.stderr
    assert "Compiling prefill" in bare_run.stderr          # the progress line while compiling
    summary = bare_run.stderr.split("Run summary: ")[1]
    for part in ("load ", "compile ", "prefill ", "tokens/s", "1 of 1 slots used"):
        assert part in summary, summary


@pytest.mark.slow
def test_demo_checkpoint_on_disk_gives_the_demo_text(bare_run, tmp_path, capsys):
    directory = demo.write_demo_checkpoint(str(tmp_path / "demo"))
    assert os.path.isfile(os.path.join(directory, "ckpt-0", "tensor00000_000"))
    config = os.path.join(directory, "config.json")
    pad_sizes = ",".join(map(str, demo.DEMO_PAD_SIZES))      # the bare run's buckets
    status = cli.main(["--checkpoint", directory, "--config", config, "--tokenizer", "bytes",
                       "--mesh", "1,1", "--pad-sizes", pad_sizes])
    assert status == 0
    assert capsys.readouterr().out == bare_run.stdout
