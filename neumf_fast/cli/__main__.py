"""``python -m neumf_fast.cli ...``: the same as ``neumf-fast ...`` (torchrun runs each process so)."""

import sys

from . import main

main(sys.argv[1:])
