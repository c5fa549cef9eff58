"""The HTTP and MCP request paths on the ONNX backend never import torch or transformers.

A subprocess opens the collection the way `mmrag serve` does (`App` -> `SearchService.from_app`
-> `create_app`), answers a text search over the ASGI app, an image search and an MCP tool
call, and reports which heavy modules it imported. (No debug endpoint: the check lives here.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmrag.embedders.registry import REFERENCE_DIR

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "clip-shapes-en" / "config.json").is_file(),
                                reason="reference model not built: run `python pipelines/train_reference.py`")

_SERVE = r"""
import asyncio, base64, json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from mmrag.app import App
from mmrag.server import create_app
from mmrag.server.mcp_tools import build_mcp
from mmrag.service import SearchService
from mmrag.settings import Settings

app = App(Settings(home=Path(sys.argv[1]), backend="onnx"))
service = SearchService.from_app(app, "shapes")
out = {}
with TestClient(create_app(app, service=service, mcp=False)) as http:
    r = http.post("/api/search", json={"query": "a photo of a blue triangle.", "k": 3})
    out["text"] = [r.status_code, [h["path"] for h in r.json()["hits"]]]
    image = base64.b64encode(Path(sys.argv[2]).read_bytes()).decode()
    r = http.post("/api/search/image", json={"image_base64": image, "k": 1})
    out["image"] = [r.status_code, [h["path"] for h in r.json()["hits"]]]
result = asyncio.run(build_mcp(service).call_tool("search_text", {"query": "a photo of a red circle.", "k": 2}))
out["mcp_blocks"] = [type(b).__name__ for b in result.content]
out["runtime"] = service.embedder.info.runtime
out["heavy"] = sorted(m for m in ("torch", "transformers", "torchvision") if m in sys.modules)
app.close()
print(json.dumps(out))
"""


def test_onnx_request_path_imports_no_torch(tmp_path: Path) -> None:
    from mmrag.app import App
    from mmrag.ingest import run_ingest
    from mmrag.settings import Settings
    from mmrag.training import synthetic

    root = synthetic.write_corpus(tmp_path / "corpus", 24, seed=7, manifest="jsonl")
    rows = {r["path"]: r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}
    home = tmp_path / "home"
    # Ingest here (this exports the ONNX model once, which needs torch): the subprocess only serves.
    app = App(Settings(home=home, backend="onnx"))
    report = run_ingest(app.store, app.embedder("mmrag-shapes-en"), root=root, collection="shapes", progress=False)
    assert report.indexed == 24
    app.close()

    query_image = sorted(rows)[5]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMRAG_", "QDRANT_"))}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, "-c", _SERVE, str(home), str(root / query_image)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], out
    assert out["runtime"] == "onnx"
    status, paths = out["text"]
    assert status == 200 and len(paths) == 3 and set(paths) <= set(rows)
    assert out["image"] == [200, [query_image]]  # an image finds itself first
    assert out["mcp_blocks"] == ["TextContent", "ImageContent"] * 2  # each hit: its JSON, then its thumbnail
