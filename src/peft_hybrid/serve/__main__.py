"""``python -m peft_hybrid.serve ...``: the same as ``peft-hybrid serve ...``."""

import sys

from peft_hybrid.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
