"""`python -m grok [run|serve|bench] [flags]`: the `grok` command (run by default)."""

import sys

from grok.serving.listen import bind_early


def main() -> int:
    """The `grok` command: binds the server's port first when serving (grok.serving.listen),
    then runs grok.cli.app.grok_main."""
    argv = sys.argv[1:]
    serve = argv[:1] == ["serve"]
    bind_early(argv[1:] if serve else argv, f"grok {'serve' if serve else 'run'}", serve)
    from grok.cli.app import grok_main

    return grok_main()


if __name__ == "__main__":
    sys.exit(main())
