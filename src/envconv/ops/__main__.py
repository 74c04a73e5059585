"""``python -m envconv.ops``: say which C++ CPU kernel envconv uses, compiling it ahead where it must (images, CI)."""

import sys

from .cpu import main

sys.exit(main())
