"""A real small filesystem for the fault tests (full disk, read-only home)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(where: Path, size_mb: int, *, why_root: str) -> Iterator[Path]:
    """A real tmpfs of `size_mb` at `where` for the test's duration (skipped, with a reason, without root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(why_root)
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
