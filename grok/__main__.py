"""`python -m grok [run|serve|bench] [flags]`: the `grok` command (run by default)."""

import sys

from grok.cli.app import grok_main

if __name__ == "__main__":
    sys.exit(grok_main())
