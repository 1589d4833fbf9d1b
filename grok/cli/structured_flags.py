"""Command-line flags of structured outputs and logit processing, and the Request fields
they fill (every request of a run gets them; input records may set their own).

--json-schema FILE, --regex RE, --choice TEXT (repeatable), --grammar FILE (Lark or GBNF):
at most one constrains the output. --logit-bias ID=BIAS,.., --min-p, --presence-penalty,
--frequency-penalty, --repetition-penalty, --min-tokens process the logits. A file that
cannot be read, a bad schema or grammar, or a value out of range is a usage error (exit 2)
naming the flag, before the model loads.
"""

from __future__ import annotations

import argparse


def _bias(text: str) -> dict:
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return {int(k): float(v) for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS,.. (e.g. 13=-100,42=5), got "
                                         f"{text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured outputs and logit processing (every request)")
    g.add_argument("--json-schema", metavar="FILE", help="output JSON matching this schema")
    g.add_argument("--regex", metavar="RE", help="output matching this regular expression")
    g.add_argument("--choice", action="append", metavar="TEXT",
                   help="output exactly one of these (repeatable)")
    g.add_argument("--grammar", metavar="FILE", help="output following this Lark or GBNF "
                   "grammar")
    g.add_argument("--logit-bias", type=_bias, metavar="ID=BIAS,..",
                   help="add BIAS in [-100, 100] to token ID's logit")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below this times "
                   "the top token's probability")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="[-2, 2]")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="[-2, 2]")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="(0, 2]; 1 = off")
    g.add_argument("--min-tokens", type=int, default=0, help="no EOS or stop token before "
                   "this many tokens")


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path}: {e}") from None


def request_fields(args) -> dict:
    """The Request fields these flags set (files read here; ValueError names the flag)."""
    fields = {"logit_bias": args.logit_bias, "min_p": args.min_p,
              "presence_penalty": args.presence_penalty,
              "frequency_penalty": args.frequency_penalty,
              "repetition_penalty": args.repetition_penalty, "min_tokens": args.min_tokens}
    if args.json_schema is not None:
        fields["json_schema"] = _read(args.json_schema, "--json-schema")
    if args.grammar is not None:
        fields["grammar"] = _read(args.grammar, "--grammar")
    if args.regex is not None:
        fields["regex"] = args.regex
    if args.choice:
        fields["choice"] = tuple(args.choice)
    return fields
