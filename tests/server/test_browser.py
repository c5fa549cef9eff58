"""The search page in real headless Chromium (Playwright, the system's /usr/bin/chromium)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.conftest import first_blue_triangle

CHROMIUM = os.environ.get("MMRAG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


# Module scope (every browser test is in this module, so still one browser per run): the sync Playwright API
# keeps an asyncio loop running in this thread until it exits, and pytest-asyncio tests after it would fail
# with "Runner.run() cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Chromium at {CHROMIUM}: CI must install it (.ci/run does: apt-get install -y chromium)")
        pytest.skip(f"no Chromium found at {CHROMIUM} (install it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    yield pg
    context.close()


def _result_paths(page) -> list[str]:
    return page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.path)")


def test_text_search_shows_blue_triangles(page, world, artifacts_dir):
    page.fill("#query", "a photo of a blue triangle.")
    page.click("#search-button")
    page.wait_for_selector("#results .hit")
    paths = _result_paths(page)
    assert len(paths) == 24
    top = [world["rows"][p] for p in paths[:5]]
    assert sum((r["color"], r["shape"]) == ("blue", "triangle") for r in top) >= 3, [(r["color"], r["shape"]) for r in top]
    page.wait_for_function("Array.from(document.querySelectorAll('#results img')).slice(0, 8).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(artifacts_dir / "search.png"))


def test_switch_to_captions_and_apply_a_filter(page, world):
    page.fill("#query", "a shape")
    page.click("#search-button")
    page.wait_for_selector("#results .hit")
    page.click("label[data-target='text']")
    page.click(".facet[data-key='color'] input[value='red']")
    page.wait_for_function("document.querySelector('#message').textContent.includes('results') && "
                           "Array.from(document.querySelectorAll('#results .hit')).length > 0")
    page.wait_for_timeout(300)
    paths = _result_paths(page)
    n_red = sum(r["color"] == "red" for r in world["rows"].values())
    assert len(paths) == min(24, n_red) and {world["rows"][p]["color"] for p in paths} == {"red"}
    count = page.text_content(".facet[data-key='color'] label:has(input[value='red']) .count")
    assert int(count) == n_red


def test_drop_an_image_then_open_the_detail_view(page, world, artifacts_dir):
    path = first_blue_triangle(world["rows"])
    data = (world["root"] / path).read_bytes()
    handle = page.evaluate_handle(
        "([bytes, name]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'})); return dt; }",
        [list(data), "query.png"],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": handle})
    page.wait_for_selector("#query-image img")
    page.wait_for_function("document.querySelector('#results .hit') !== null")
    paths = _result_paths(page)
    assert paths[0] == path  # the image finds itself first
    page.click(f"#results .hit[data-path='{path}']")
    page.wait_for_selector("#similar .hit")
    assert page.text_content("#detail-caption") == world["rows"][path]["caption"]
    similar = page.eval_on_selector_all("#similar .hit", "els => els.map(e => e.dataset.path)")
    assert len(similar) == 8 and path not in similar
    assert sum(world["rows"][p]["shape"] == "triangle" for p in similar) >= 4
    page.wait_for_function("document.querySelector('#detail-image').complete && document.querySelector('#detail-image').naturalWidth > 0")
    page.screenshot(path=str(artifacts_dir / "detail.png"))


def test_nothing_matches_message(page, http):
    """A real empty answer: the min-score box asks the server for hits scoring above every one."""
    page.fill("#query", "a photo of a blue triangle.")
    page.click("#search-button")
    page.wait_for_selector("#results .hit")
    best = http.post("/api/search", json={"query": "a photo of a blue triangle.", "k": 1}).json()["hits"][0]["score"]
    threshold = min(math.ceil(best * 100) / 100 + 0.01, 1.0)  # the box takes 2 decimals; above the best
    assert threshold > best
    page.fill("#min-score", f"{threshold:.2f}")
    with page.expect_response("**/api/search") as answer:
        page.click("#search-button")
    assert answer.value.request.post_data_json["score_threshold"] == pytest.approx(threshold)
    assert answer.value.status == 200 and answer.value.json()["hits"] == []
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('No images match')")
    assert page.eval_on_selector_all("#results .hit", "els => els.length") == 0
    # cleared again, the same query finds images
    page.fill("#min-score", "")
    page.click("#search-button")
    page.wait_for_function("document.querySelectorAll('#results .hit').length === 24")


def test_chinese_search_and_captions(browser, zh_server, zh_world, artifacts_dir):
    """On a mmrag-shapes-zh collection: a Chinese query finds blue triangles; Chinese captions render."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="zh-CN")
    page = context.new_page()
    page.goto(zh_server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.fill("#query", "一张蓝色三角形的照片。")
    page.click("#search-button")
    page.wait_for_selector("#results .hit")
    paths = _result_paths(page)
    rows = zh_world["rows"]
    # the grid's order is the reference computation's: cosine of the query to every image, best first
    emb = zh_world["emb"]
    names = sorted(rows)
    q = emb.embed_texts(["一张蓝色三角形的照片。"])[0]
    images = emb.embed_images([Image.open(zh_world["root"] / p).convert("RGB") for p in names])
    expected = [names[i] for i in np.argsort(-(images @ q), kind="stable")[:24]]
    assert paths[:5] == expected[:5] and len(paths) == 24
    page.wait_for_function("Array.from(document.querySelectorAll('#results img')).slice(0, 8).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(artifacts_dir / "search-zh.png"))
    assert any(obj == ("blue", "triangle") for obj in [(rows[paths[0]]["color"], rows[paths[0]]["shape"]),
                                                        (rows[paths[0]]["color2"], rows[paths[0]]["shape2"])])
    page.click(f"#results .hit[data-path='{paths[0]}']")
    page.wait_for_function("document.querySelector('#detail-image').complete && document.querySelector('#detail-image').naturalWidth > 0")
    caption = page.text_content("#detail-caption")
    assert caption == rows[paths[0]]["caption_zh"] and "三角形" in caption
    # Real glyphs, not boxes: without a CJK font every Han character is the same .notdef box,
    # so two different characters drawn on a canvas give identical pixels.
    same = page.evaluate("""() => {
        const draw = (ch) => { const c = document.createElement('canvas'); c.width = c.height = 40;
            const g = c.getContext('2d'); g.font = '32px sans-serif'; g.fillText(ch, 2, 34);
            return Array.from(g.getImageData(0, 0, 40, 40).data).join(','); };
        return draw('三') === draw('蓝'); }""")
    assert not same, "Chinese renders as boxes: install a CJK font (apt-get install fonts-noto-cjk; .ci/run does)"
    page.screenshot(path=str(artifacts_dir / "detail-zh.png"))
    context.close()


def test_not_ready_message(browser, server):
    context = browser.new_context()
    pg = context.new_page()
    pg.route("**/readyz", lambda route: route.fulfill(status=503, content_type="application/json",
                                                      body='{"status": "not ready", "detail": "collection \'x\' is empty"}'))
    pg.goto(server.url + "/")
    pg.wait_for_function("document.querySelector('#message').textContent.includes('not ready')")
    assert "is empty" in pg.text_content("#message")
    context.close()
