"""``python -m envconv.ops``: build the C++ CPU kernel ahead of its first use (images, install scripts, CI)."""

import sys

from .cpu import main

sys.exit(main())
