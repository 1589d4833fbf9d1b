"""The command line's newcomer paths on the demo model: config discovery, clear errors with
exit status 2 naming the flag the user typed, --stop, the run summary, finite JSON, default
slots and seeds. One runner (the demo written as a checkpoint) is built per module."""

import io
import json
import math
import os
import subprocess
import sys
import types

import pytest

from grok.serving.requests import request_seed
from grok import cli, demo
from grok.loading import ModelOptions, resolve_config, resolve_tokenizer
from grok.cli.output import ResultPrinter, RunStats, finite_json
from grok.serving.results import Completion

REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo.write_demo_checkpoint(str(tmp_path_factory.mktemp("demo") / "ckpt"))


@pytest.fixture(scope="module")
def model_argv(demo_dir):
    # --checkpoint alone: DIR/config.json and the byte tokenizer are discovered. One 64-token
    # bucket: a prompt's first decode step fits the shortest decode variant (128 of the demo's
    # sequence_len 256), so start-up compiles one decode variant, not two.
    return ["--checkpoint", demo_dir, "--mesh", "1,1", "--pad-sizes", "64", "--batch-size", "2"]


@pytest.fixture(scope="module")
def runner(model_argv):
    return cli.build_runner(cli.build_parser().parse_args(model_argv))


def run_cli(capsys, argv, runner=None, stdin=None):
    capsys.readouterr()
    status = cli.main(list(argv), runner=runner, stdin=stdin)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_config_json_beside_the_checkpoint_is_used(runner, demo_dir, capsys):
    assert runner.config.vocab_size == demo.DEMO.vocab_size            # not Grok-1's 131072
    assert runner.config.model.num_layers == demo.DEMO.model.num_layers
    assert type(runner.tokenizer).__name__ == "ByteTokenizer"


def test_a_byte_vocabulary_checkpoint_ignores_groks_tokenizer_in_the_cwd(demo_dir, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"Grok-1's tokenizer would be here")
    options = ModelOptions(checkpoint=demo_dir)
    config, source = resolve_config(options, demo_dir)
    assert source == os.path.join(demo_dir, "config.json")
    assert type(resolve_tokenizer(options, demo_dir, config)).__name__ == "ByteTokenizer"
    grok1_like = config.replace(vocab_size=4096)       # a larger vocabulary takes ./tokenizer.model
    with pytest.raises(cli.UsageError, match="not a SentencePiece model"):
        resolve_tokenizer(options, demo_dir, grok1_like)


def test_checkpoint_not_matching_its_config_names_the_config_and_flag(demo_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(demo_dir, "ckpt-0"), other / "ckpt-0")
    config = demo.DEMO.to_dict()
    config["model"]["num_layers"] = 3                      # the checkpoint has 2
    (other / "config.json").write_text(json.dumps(config))
    status, _, err = run_cli(capsys, ["--checkpoint", str(other), "--mesh", "1,1"])
    assert status == 2
    assert str(other / "config.json") in err and "--config" in err, err
    assert "Traceback" not in err


def test_clear_errors_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "garbage.model").write_bytes(b"not a sentencepiece model")
    big = demo.DEMO.to_dict()
    big["vocab_size"] = 4096
    (tmp_path / "big.json").write_text(json.dumps(big))
    cases = [(["--input-file", "empty.txt"], "no prompts"),
             (["--config", "big.json", "--tokenizer", "garbage.model"], "not a SentencePiece"),
             (["--interactive", "--json"], "--json"),
             (["--config", "big.json", "--tokenizer", "bytes"], "--tokenizer FILE"),
             (["--config", "big.json"], "--tokenizer"),
             (["--top-p", "0"], "--top-p"),
             (["--temperature", "1e400"], "--temperature"),
             (["--seed", "-1"], "--seed"),
             (["--max-tokens", "0"], "--max-tokens"),
             (["--max-len", "0"], "--max-tokens"),
             (["--top-k", "-3"], "--top-k")]
    for argv, words in cases:
        status, _, err = run_cli(capsys, argv)
        assert status == 2, (argv, err)
        assert "error" in err and words in err and "Traceback" not in err, (argv, err)
        assert "nucleus_p" not in err and "max_len" not in err and "rng_seed" not in err, err


def test_bad_records_name_their_own_keys(runner, model_argv, tmp_path, capsys):
    lines = ['{"prompt": "a", "temperature": 1' + "0" * 400 + '}',    # OverflowError
             '{"prompt": "a", "top_p": 0}',
             '{"prompt": "a", "max_tokens": 0}',
             '{"prompt": "a", "max_tokens": 3}']
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    status, out, _ = run_cli(capsys, model_argv + ["--input-file", str(path), "--json"], runner)
    got = [json.loads(line) for line in out.splitlines()]
    assert status == 1 and [r["index"] for r in got] == [0, 1, 2, 3]
    for record, key in zip(got, ["'temperature'", "'top_p'", "'max_tokens'"]):
        assert record["finish_reason"] == "error" and key in record["error"], record
    assert "error" not in got[3] and len(got[3]["output_ids"]) == 3


def test_stop_strings_and_run_summary(runner, model_argv, capsys):
    greedy = model_argv + ["--temperature", "0", "--max-tokens", "40", "--prompt", "Hi"]
    status, out, err = run_cli(capsys, greedy + ["--json"], runner)
    full = json.loads(out)["text"]
    assert status == 0 and len(full) == 40
    assert "Run summary:" in err and "prefill" in err and "tokens/s" in err, err
    assert "1 of 2 slots used" in err
    stop = full[10:13]
    expected = full[:full.find(stop)]
    status, out, _ = run_cli(capsys, greedy + ["--json", "--stop", stop], runner)
    record = json.loads(out)
    assert (record["text"], record["finish_reason"]) == (expected, "stop")
    status, out, _ = run_cli(capsys, greedy + ["--stream", "--stop", stop], runner)
    assert out == f"Output for prompt: Hi {expected}\n"


def test_json_output_never_holds_nan(capsys):
    args = cli.build_parser().parse_args(["--json"])
    items = cli.read_items(args, "x")
    completion = Completion("t", request_id="0", prompt_ids=[5], output_ids=[7, 8],
                            logprobs=[math.nan, -math.inf], top_logprobs=[[(7, math.nan)], []])
    printer = ResultPrinter(args, items, RunStats())
    printer.on_result(0, completion)
    printer.finish()
    out = capsys.readouterr()
    record = json.loads(out.out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert record["logprobs"] == [None, None] and record["top_logprobs"][0] == [[7, None]]
    assert "null" in out.err
    assert finite_json({"a": [1.0, math.inf]}) == ({"a": [1.0, None]}, 1)


def test_default_slots_and_seeds():
    parse = cli.build_parser().parse_args

    def items(n):
        return cli.read_items(parse([f"--prompt=p{i}" for i in range(n)]), "x")

    assert [cli.default_slots(parse([]), items(n)) for n in (1, 3, 20)] == [1, 3, 8]
    assert cli.default_slots(parse(["--batch-size", "5"]), items(20)) == 5
    assert cli.default_slots(parse(["--interactive"]), []) == 1
    assert request_seed(7, 0) == 7                      # request 0: the reference's seed
    runs = [{request_seed(seed, i) for i in range(1, 200)} for seed in (1, 2)]
    assert not runs[0] & runs[1] and len(runs[0]) == 199
    assert request_seed(1, 1) != 2


def test_help_on_every_entry_point(capsys):
    assert cli.grok_main(["--help"]) == 0 and "grok serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.grok_main(["run", "--help"])
    assert exit_info.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    out = subprocess.run([sys.executable, "-m", "grok.cli", "--help"], cwd=REPO_DIR,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--max-tokens" in out.stdout and "--stop" in out.stdout


def test_repl_survives_input_that_is_not_utf8(runner, model_argv, capsys):
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe hi\nmore\n/exit\n"), encoding="utf-8")
    status, out, err = run_cli(capsys, model_argv + ["--interactive", "--temperature", "0",
                                                     "--max-tokens", "5"], runner, stdin)
    assert status == 0 and "Traceback" not in err
    assert [len(line) for line in out.splitlines()] == [5, 5]      # two answers of 5 bytes


def test_serve_flag_hands_the_parsed_flags_to_the_server(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("grok.serving.http")
    fake.add_serve_arguments = lambda parser: parser.add_argument("--port", type=int)
    fake.serve = lambda args, build_runner: calls.append((args, build_runner)) or 0
    monkeypatch.setitem(sys.modules, "grok.serving.http", fake)
    assert cli.main(["--serve", "--port", "9", "--checkpoint", "x"]) == 0
    assert cli.grok_main(["serve", "--port", "10"]) == 0
    assert [(a.port, a.checkpoint, callable(b)) for a, b in calls] == [(9, "x", True),
                                                                       (10, None, True)]
    fake.serve = lambda args, build_runner: build_runner()   # the model flags are checked
    assert cli.main(["--serve", "--checkpoint", "/absent"]) == 2
    assert "--checkpoint /absent" in capsys.readouterr().err
