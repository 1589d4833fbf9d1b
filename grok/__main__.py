"""`python -m grok [run|serve|bench] [flags]`: the `grok` command (run by default)."""

import sys

from grok.cli.app import grok_main

sys.exit(grok_main())
