"""The `mmrag` command line."""

from __future__ import annotations

from mmrag.cli.main import main

__all__ = ["main"]
