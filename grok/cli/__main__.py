"""`python -m grok.cli [flags]`: the same as `python run.py [flags]`."""

import sys

from grok.cli.app import main

sys.exit(main(prog="python -m grok.cli"))
