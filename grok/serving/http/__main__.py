"""`python -m grok.serving.http [run.py's model flags] [server flags]`: the server alone
(the same as `python run.py --serve` / `grok serve`)."""

import inspect
import logging
import sys

from grok import cli
from grok.serving.http.server import add_serve_arguments, serve


def main(argv=None) -> int:
    if "serve" in inspect.signature(cli.main).parameters:   # the CLI has `grok serve`
        return cli.main(sys.argv[1:] if argv is None else argv,
                        prog="python -m grok.serving.http", serve=True)
    parser = cli.build_parser()
    if "--port" not in parser._option_string_actions:
        add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli.init_multihost(args)
        return serve(args, lambda: cli.build_runner(args))
    except (cli.UsageError, ValueError) as e:
        print(f"grok serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
