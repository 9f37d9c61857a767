"""``python -m hf_monosem report ...``: the ``hf-monosem`` console command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
