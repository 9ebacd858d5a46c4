"""``python -m peft_hybrid.cli``: the ``peft-hybrid`` command without the installed entry point."""
import sys

from . import main

sys.exit(main())
