"""Fixtures for the fault tests: real second processes, real files, the `mmrag` CLI in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mmrag", *args]

    def run(self, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **env}, cwd=self.cwd)

    def json(self, *args: str, **env: str) -> tuple[int, Any]:
        proc = self.run(*args, "--json", **env)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"no JSON from {args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}") from None

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**self.env, **env}, cwd=self.cwd)


@pytest.fixture
def cli(tmp_path: Path, tiny_clip_dir: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMRAG_", "QDRANT_"))}
    env.update(
        PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        MMRAG_HOME=str(tmp_path / "home"), MMRAG_MODEL=str(tiny_clip_dir), MMRAG_WORKERS="1",
        MMRAG_TORCH_THREADS="1", OMP_NUM_THREADS="1",
    )
    (tmp_path / "cwd").mkdir()
    return Cli(env=env, cwd=tmp_path / "cwd")  # an empty cwd: no stray .env


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """A synthetic captioned corpus of `n` small PNGs (sidecar captions), written once per size."""
    from mmrag.training.synthetic import write_corpus

    made: dict[int, Path] = {}

    def make(n: int) -> Path:
        if n not in made:
            made[n] = write_corpus(tmp_path_factory.mktemp(f"shapes{n}"), n, seed=7, manifest=None, image_size=32)
        return made[n]

    return make
