"""``python -m peft_hybrid.cli``: the ``peft-hybrid`` command without the installed entry point."""

import sys

from peft_hybrid.cli import main

sys.exit(main())
