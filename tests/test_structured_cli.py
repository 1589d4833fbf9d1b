"""Structured-output flags on the command line: a bad schema, regex, grammar file or sampling
value exits 2 naming the flag, before any model loads; good flags fill every Request and
input records may set the same fields."""

import json

import pytest

from grok.cli.app import main
from grok.cli.flags import build_parser
from grok.cli.inputs import make_request


@pytest.mark.parametrize("argv, named", [
    (["--regex", "a(b"], "--regex"),
    (["--json-schema", "/nonexistent/schema.json"], "--json-schema"),
    (["--min-p", "2"], "--min-p"),
    (["--presence-penalty", "9"], "--presence-penalty"),
    (["--regex", "a", "--choice", "x"], "regex"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, named, capsys):
    assert main(["--prompt", "hi"] + argv) == 2
    assert named in capsys.readouterr().err


def test_bad_grammar_file_names_the_flag_and_the_error(tmp_path, capsys):
    path = tmp_path / "g.lark"
    path.write_text("start: undefined_rule\n")
    assert main(["--prompt", "hi", "--grammar", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--grammar" in err and "undefined_rule" in err


def test_flags_and_records_fill_the_request(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"type": "object"}))
    args = build_parser().parse_args(["--json-schema", str(path), "--min-p", "0.1",
                                      "--logit-bias", "13=-100,42=5", "--min-tokens", "3"])
    request = make_request("hi", args, 0)
    assert json.loads(request.json_schema) == {"type": "object"}
    assert request.logit_bias == ((13, -100.0), (42, 5.0)) and request.min_p == 0.1
    assert request.min_tokens == 3
    plain = build_parser().parse_args([])
    record = make_request({"prompt": "hi", "regex": "[0-9]+", "repetition_penalty": 1.2},
                          plain, 1)
    assert record.regex == "[0-9]+" and record.repetition_penalty == 1.2
    with pytest.raises(ValueError, match="'choice'"):
        make_request({"prompt": "hi", "choice": []}, plain, 2)
