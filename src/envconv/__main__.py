"""``python -m envconv``: the command line."""

from .recipes.cli import main

raise SystemExit(main())
