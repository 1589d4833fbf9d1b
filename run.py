"""Runs Grok-1 (checkpoints/ckpt-0), another checkpoint, or the embedded demo.

    python run.py                      # demo: a tiny model with random weights, runs anywhere
    python run.py --checkpoint DIR --prompt "Hello"    # DIR holds ckpt-0/ (and config.json)
    python run.py --help               # every flag

Works from any directory (this file's directory is put first on the import path). All the
work is in grok/cli/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from grok.serving.listen import bind_early

    bind_early(sys.argv[1:], "run.py")     # --serve on a port in use: exit 2 before loading
    from grok.cli import main

    sys.exit(main())
