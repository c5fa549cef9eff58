"""One local Ray runtime per pytest session (2 CPUs, no dashboard), shared by every Ray test.

No __init__.py here: a package named `ray` under tests/ would shadow the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_runtime():
    ray = pytest.importorskip("ray")
    # Workers import the test helpers (kill hooks) and this worktree's mmrag by path.
    paths = [str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                   object_store_memory=256 * 1024 * 1024, configure_logging=False)
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def ref_embedder():
    from mmrag.embedders import load_embedder

    return load_embedder("mmrag-shapes-en", device="cpu")
