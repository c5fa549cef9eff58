"""`python -m mmrag` is the `mmrag` command."""

from mmrag.cli import main

raise SystemExit(main())
