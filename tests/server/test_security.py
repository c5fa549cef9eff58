"""Attacks: path traversal through ids and stored paths, a decompression bomb, an oversized body, keys."""

from __future__ import annotations

import io
import os

import httpx
import pytest
from PIL import Image

from mmrag.store.convert import point_id
from server.conftest import API_KEY


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG", optimize=True)  # compresses to a few KB
    return buf.getvalue()


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "1 OR 1=1"])
def test_traversal_through_the_id_is_refused(http, bad_id):
    r = http.get(f"/api/points/{bad_id}/image")
    assert r.status_code == 404, r.text
    assert "root:" not in r.text


def test_traversal_through_stored_paths_and_symlinks_is_refused(http, world, tmp_path):
    store, live = world["store"], world["store"].resolve("shapes")
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png((8, 8)))
    link = world["root"] / "link.png"
    os.symlink(outside, link)
    try:
        from qdrant_client import models

        vec = [0.0] * world["emb"].info.dim
        vec[0] = 1.0
        bad = {"escape": "../../secret.png", "absolute": str(outside), "symlink": "link.png"}
        ids = {k: point_id(f"attack-{k}.png") for k in bad}
        store.upsert(live, [models.PointStruct(id=ids[k], vector={"image": vec, "text": vec}, payload={"path": p})
                            for k, p in bad.items()])
        for kind in bad:
            r = http.get(f"/api/points/{ids[kind]}/image")
            assert r.status_code == 404, (kind, r.text)
            assert "not inside the corpus root" in r.json()["detail"]
            assert http.get(f"/api/points/{ids[kind]}/thumbnail").status_code == 404
    finally:
        store.delete_points(live, list(ids.values()))
        link.unlink()


def test_a_query_string_is_never_read_as_a_server_file(http, world):
    # An existing image path on the server, sent as text: embedded as text, never opened.
    path = str(world["root"] / sorted(world["rows"])[0])
    hits = http.post("/api/search", json={"query": path, "k": 3}).json()["hits"]
    assert all(h["vector"] == "image" for h in hits)
    assert hits[0]["score"] < 0.99  # the file itself would score 1.0 if it had been read as an image


def test_decompression_bomb_upload_is_refused(http):
    bomb = _png((10_000, 10_000))  # 100 MP in a few KB: over the 40 MP limit
    assert len(bomb) < 200_000
    r = http.post("/api/search/upload", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 400, r.text
    assert "pixels" in r.json()["detail"] or "bomb" in r.json()["detail"]


def test_oversized_body_is_refused_before_reading(http, service):
    big = b"\0" * (service.limits.max_bytes * 2)
    r = http.post("/api/search/upload", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(40):
            yield b"\0" * (1024 * 1024)

    r = http.post("/api/search/image", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_disallowed_format_is_refused(http):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="ICO")
    r = http.post("/api/search/upload", files={"file": ("x.ico", buf.getvalue(), "image/x-icon")})
    assert r.status_code == 400 and "format ICO is not accepted" in r.json()["detail"]


def test_api_key_missing_wrong_and_right(keyed_server):
    url = keyed_server.url
    body = {"query": "a red circle", "k": 1}
    missing = httpx.post(f"{url}/api/search", json=body)
    assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
    wrong = httpx.post(f"{url}/api/search", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "wrong API key"}
    for r in (missing, wrong):
        assert API_KEY not in r.text and API_KEY not in str(r.headers)
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/api/points/{point_id('x.png')}/image").status_code == 401
    ok = httpx.post(f"{url}/api/search", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200 and len(ok.json()["hits"]) == 1
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/").status_code == 200  # the page shell; it asks for the key


def test_cors_is_off_by_default_and_configurable(http, keyed_server):
    pre = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in http.options("/api/search", headers=pre).headers
    assert "access-control-allow-origin" not in http.get("/healthz", headers={"Origin": "http://evil.example"}).headers
    ok = httpx.options(f"{keyed_server.url}/api/search", headers=pre)
    assert ok.headers["access-control-allow-origin"] == "http://allowed.example"
    evil = httpx.options(f"{keyed_server.url}/api/search", headers={**pre, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
