"""One collection (reference model, synthetic shapes), one uvicorn server and one browser per session."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from mmrag.embedders.registry import REFERENCE_DIR

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "clip-shapes-en" / "config.json").is_file(),
                                reason="reference model not built: run `python pipelines/train_reference.py`")

N_IMAGES = 120
SEED = 424242  # the held-out gallery seed of tests/quality
COLLECTION = "shapes"
API_KEY = "test-key-8f3b2c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn on a free loopback port in a background thread."""

    def __init__(self, asgi_app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The corpus, its manifest rows, an EdgeStore with the alias `shapes` -> `shapes__v1`, the embedder."""
    from mmrag.embedders import load_embedder
    from mmrag.ingest import IngestOptions
    from mmrag.jobs.reindex import JobSpec, sync
    from mmrag.store import EdgeStore
    from mmrag.training import synthetic

    base = tmp_path_factory.mktemp("serve")
    root = synthetic.write_corpus(base / "corpus", N_IMAGES, seed=SEED, manifest="jsonl")
    rows = {r["path"]: r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}
    home = base / "home"
    emb = load_embedder("mmrag-shapes-en", device="cpu")
    store = EdgeStore(home)
    report = sync(JobSpec(collection=COLLECTION, root=root, manifest=root / "manifest.jsonl",
                          options=IngestOptions(batch_size=64, workers=1)), store=store, embedder=emb, home=home)
    assert report.ok and report.ingest["indexed"] == N_IMAGES, report.summary()
    assert store.resolve(COLLECTION) == f"{COLLECTION}__v1"
    yield {"root": root, "rows": rows, "home": home, "store": store, "emb": emb}
    store.close()


@pytest.fixture(scope="session")
def service(world):
    from mmrag.service import SearchService

    return SearchService(world["store"], world["emb"], COLLECTION, facet_fields=["format", "color", "shape"],
                         close_grace_s=0.5)


@pytest.fixture(scope="session")
def server(service):
    """The open server (no API key) used by the API, browser, MCP and remote-retriever tests."""
    from mmrag.server import create_app

    with ServerThread(create_app(service=service, api_key=None, cors_origins=[])) as s:
        yield s


@pytest.fixture(scope="session")
def keyed_server(service):
    from mmrag.server import create_app

    with ServerThread(create_app(service=service, api_key=API_KEY, cors_origins=["http://allowed.example"],
                                 mcp=False)) as s:
        yield s


@pytest.fixture(scope="session")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def first_blue_triangle(rows: dict) -> str:
    return next(p for p, r in sorted(rows.items()) if r["num_objects"] == 1 and (r["color"], r["shape"]) == ("blue", "triangle"))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    out = Path(__file__).resolve().parents[1] / "artifacts"
    out.mkdir(exist_ok=True)
    return out


N_IMAGES_ZH = 60


@pytest.fixture(scope="session")
def zh_world(tmp_path_factory):
    """A Chinese-captioned corpus in its own EdgeStore, embedded with mmrag-shapes-zh."""
    from mmrag.embedders import load_embedder
    from mmrag.ingest import IngestOptions, run_ingest
    from mmrag.store import EdgeStore
    from mmrag.training import synthetic

    if not (REFERENCE_DIR / "chinese-clip-shapes-zh" / "config.json").is_file():
        pytest.skip("Chinese reference model not built: run `python pipelines/train_reference.py`")
    base = tmp_path_factory.mktemp("serve-zh")
    root = synthetic.write_corpus(base / "corpus", N_IMAGES_ZH, seed=SEED, lang="zh", manifest="jsonl")
    rows = {r["path"]: r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}
    emb = load_embedder("mmrag-shapes-zh", device="cpu")
    store = EdgeStore(base / "home")
    report = run_ingest(store, emb, root=root, manifest=root / "manifest.jsonl", collection="shapes_zh",
                        options=IngestOptions(batch_size=64, workers=1), progress=False)
    assert report.indexed == N_IMAGES_ZH
    yield {"root": root, "rows": rows, "store": store, "emb": emb}
    store.close()


@pytest.fixture(scope="session")
def zh_server(zh_world):
    from mmrag.server import create_app
    from mmrag.service import SearchService

    service = SearchService(zh_world["store"], zh_world["emb"], "shapes_zh", facet_fields=["format", "color", "shape"])
    with ServerThread(create_app(service=service, api_key=None, cors_origins=[], mcp=False)) as s:
        yield s
