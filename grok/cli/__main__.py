"""`python -m grok.cli [flags]`: the same as `python run.py [flags]`."""

import sys

from grok.cli.app import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m grok.cli"))
