"""The HTTP API over real HTTP (uvicorn on loopback) against the reference model's collection."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from mmrag.store.convert import point_id
from mmrag.training import synthetic
from server.conftest import COLLECTION, N_IMAGES, first_blue_triangle


def _png(path) -> bytes:
    return path.read_bytes()


def test_health_ready_and_openapi(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert (ready["status"], ready["live"], ready["points"]) == ("ready", f"{COLLECTION}__v1", N_IMAGES)
    schema = http.get("/openapi.json").json()
    assert {"/api/search", "/api/search/upload", "/api/points/{point_id}/similar", "/api/classify"} <= set(schema["paths"])
    assert "swagger-ui" in http.get("/docs").text


def test_text_search_returns_blue_triangles_first(http, world):
    r = http.post("/api/search", json={"query": "a photo of a blue triangle.", "k": 5})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 5
    top = world["rows"][hits[0]["path"]]
    assert ("blue", "triangle") in {(top["color"], top["shape"]), (top["color2"], top["shape2"])}
    # Each hit carries what the page and clients need; the score is the model's own cosine.
    h = hits[0]
    assert h["id"] == point_id(h["path"])
    assert (h["width"], h["height"]) == (64, 64)
    assert h["caption"] == world["rows"][h["path"]]["caption"] == h["payload"]["caption"]
    assert h["thumbnail_url"] == f"/api/points/{h['id']}/thumbnail"
    emb = world["emb"]
    q = emb.embed_texts(["a photo of a blue triangle."])[0]
    from mmrag.corpus import load_rgb

    v = emb.embed_images([load_rgb(world["root"] / h["path"])])[0]
    assert h["score"] == pytest.approx(float(np.dot(q, v)), abs=1e-4)
    assert [x["score"] for x in hits] == sorted((x["score"] for x in hits), reverse=True)


def test_targets_filters_threshold(http, world):
    text = http.post("/api/search", json={"query": "a red circle", "k": 3, "target": "text"}).json()
    assert {h["vector"] for h in text["hits"]} == {"text"}
    fused = http.post("/api/search", json={"query": "a red circle", "k": 3, "target": "fused"}).json()
    assert {h["vector"] for h in fused["hits"]} == {"fused"}
    red = http.post("/api/search", json={"query": "a shape", "k": 50, "filter": {"color": "red"}}).json()["hits"]
    assert red and len(red) == min(50, sum(r["color"] == "red" for r in world["rows"].values()))
    assert {h["payload"]["color"] for h in red} == {"red"}
    none = http.post("/api/search", json={"query": "a shape", "k": 5, "score_threshold": 0.9999}).json()
    assert none["hits"] == []


def test_image_search_multipart_and_base64_find_the_image_itself(http, world):
    path = sorted(world["rows"])[3]
    data = _png(world["root"] / path)
    up = http.post("/api/search/upload", files={"file": ("q.png", data, "image/png")}, data={"k": "3"})
    assert up.status_code == 200, up.text
    assert up.json()["hits"][0]["path"] == path
    assert up.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    b64 = http.post("/api/search/image", json={"image_base64": "data:image/png;base64," + base64.b64encode(data).decode(), "k": 3})
    assert [h["id"] for h in b64.json()["hits"]] == [h["id"] for h in up.json()["hits"]]


def test_similar_point_image_thumbnail(http, world):
    path = first_blue_triangle(world["rows"])
    pid = point_id(path)
    sim = http.get(f"/api/points/{pid}/similar", params={"k": 5}).json()["hits"]
    assert len(sim) == 5 and pid not in {h["id"] for h in sim}
    # the nearest neighbours of a blue triangle are mostly blue triangles
    same = sum(world["rows"][h["path"]]["shape"] == "triangle" for h in sim)
    assert same >= 3, [h["path"] for h in sim]
    point = http.get(f"/api/points/{pid}").json()
    assert (point["id"], point["path"], point["score"]) == (pid, path, None)
    image = http.get(f"/api/points/{pid}/image")
    assert image.headers["content-type"] == "image/png"
    assert image.content == (world["root"] / path).read_bytes()
    thumb = http.get(f"/api/points/{pid}/thumbnail", params={"size": 32})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)


def test_classify_uploaded_image(http, world):
    path = first_blue_triangle(world["rows"])
    data = (world["root"] / path).read_bytes()
    r = http.post("/api/classify/upload", files={"file": ("t.png", data, "image/png")},
                  data={"labels": "triangle,circle,square,star"})
    assert r.status_code == 200, r.text
    labels = r.json()["labels"]
    assert labels[0]["label"] == "triangle"
    assert sum(x["probability"] for x in labels) == pytest.approx(1.0, abs=1e-5)
    j = http.post("/api/classify", json={"image_base64": base64.b64encode(data).decode(), "labels": ["triangle", "circle"]})
    assert j.json()["labels"][0]["label"] == "triangle"


def test_collections_and_facets(http, world):
    cols = http.get("/api/collections").json()
    assert cols == [{"name": f"{COLLECTION}__v1", "aliases": [COLLECTION], "points": N_IMAGES, "busy": None,
                     "model_id": world["emb"].info.model_id, "dim": world["emb"].info.dim, "schema_version": cols[0]["schema_version"]}]
    facets = http.get("/api/facets").json()["facets"]
    colors = {f["value"]: f["count"] for f in facets["color"]}
    expected: dict[str, int] = {}
    for r in world["rows"].values():
        expected[r["color"]] = expected.get(r["color"], 0) + 1
    assert colors == expected
    assert facets["format"] == [{"value": "PNG", "count": N_IMAGES}]
    cfg = http.get("/api/config").json()
    assert cfg["targets"][:3] == ["image", "text", "fused"] and cfg["facet_fields"] == ["format", "color", "shape"]


def test_chinese_query_is_accepted(http):
    r = http.post("/api/search", json={"query": "一个蓝色的三角形", "k": 2})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


@pytest.mark.parametrize("body, status, words", [
    ({"query": "x", "target": "nope"}, 400, "target must be one of image, text, fused"),
    ({"query": "x", "filter": {"color": {"bogus": 1}}}, 400, "bad filter"),
    ({"query": "x", "k": 0}, 422, "greater than or equal to 1"),
    ({"query": ""}, 422, "at least 1 character"),
    ({"query": "x", "target": "fused", "score_threshold": 0.5}, 400, "score_threshold"),
    ({"query": "x", "unknown": 1}, 422, "Extra inputs"),
])
def test_bad_search_requests_get_4xx_with_a_message(http, body, status, words):
    r = http.post("/api/search", json=body)
    assert r.status_code == status, r.text
    assert words in r.text


def test_malformed_inputs_are_4xx(http):
    assert http.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    bad = http.post("/api/search/image", json={"image_base64": "%%%"})
    assert bad.status_code == 400 and "not valid base64" in bad.json()["detail"]
    junk = http.post("/api/search/upload", files={"file": ("x.png", b"not an image", "image/png")})
    assert junk.status_code == 400 and "not a readable image" in junk.json()["detail"]
    r = http.get("/api/points/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and "no point" in r.json()["detail"]
    r = http.get("/api/points/not-a-uuid/similar")
    assert r.status_code == 404
    assert http.get("/api/points/" + point_id("x.png") + "/thumbnail", params={"size": 5}).status_code == 422


def test_metrics_count_requests_per_endpoint(http):
    http.get("/healthz")
    text = http.get("/metrics").text
    assert 'mmrag_http_requests_total{endpoint="/api/search",method="POST",status="200"}' in text
    assert 'mmrag_http_request_duration_seconds_bucket{endpoint="/healthz"' in text


def test_a_rendered_variant_is_found_through_the_api(http, world):
    path = sorted(world["rows"])[0]
    row = world["rows"][path]
    scene = synthetic.Scene.from_dict({
        "objects": [{k: row[k + s] for k in ("shape", "color", "size", "position")} for s in ("", "2") if row["shape" + s]],
        "background": row["background"],
    })
    variant = synthetic.render(scene, seed=row["render_seed"] + 1)
    buf = io.BytesIO()
    variant.save(buf, format="PNG")
    hits = http.post("/api/search/upload", files={"file": ("v.png", buf.getvalue(), "image/png")}, data={"k": "1"}).json()["hits"]
    top = world["rows"][hits[0]["path"]]
    assert (top["shape"], top["color"]) == (row["shape"], row["color"])
