"""``python -m envconv``: the command line."""

from .cli import main

raise SystemExit(main())
