"""Runs Grok-1 (checkpoints/ckpt-0), another checkpoint, or the embedded demo.

    python run.py                      # demo: a tiny model with random weights, runs anywhere
    python run.py --checkpoint checkpoints --tokenizer tokenizer.model --prompt "Hello"
    python run.py --help               # every flag

All the work is in grok/cli.py.
"""

import sys

from grok.cli import main

if __name__ == "__main__":
    sys.exit(main())
