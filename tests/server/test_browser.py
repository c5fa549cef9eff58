"""The search page in real headless Chromium (Playwright, the system's /usr/bin/chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from server.conftest import first_blue_triangle

CHROMIUM = os.environ.get("MMRAG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
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


def test_nothing_matches_message_and_chinese(page):
    page.fill("#query", "一个蓝色的三角形")
    page.click("#search-button")
    page.wait_for_selector("#results .hit")
    page.click(".facet[data-key='color'] input[value='red']")
    page.click(".facet[data-key='color'] input[value='blue']")
    page.click(".facet[data-key='shape'] input[value='triangle']")
    page.click(".facet[data-key='format'] input[value='PNG']")
    page.fill("#query", "x")
    page.evaluate("document.querySelector('#results').replaceChildren()")
    page.route("**/api/search", lambda route: route.fulfill(status=200, content_type="application/json",
                                                           body='{"hits": []}'))
    page.click("#search-button")
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('No images match')")


def test_not_ready_message(browser, server):
    context = browser.new_context()
    pg = context.new_page()
    pg.route("**/readyz", lambda route: route.fulfill(status=503, content_type="application/json",
                                                      body='{"status": "not ready", "detail": "collection \'x\' is empty"}'))
    pg.goto(server.url + "/")
    pg.wait_for_function("document.querySelector('#message').textContent.includes('not ready')")
    assert "is empty" in pg.text_content("#message")
    context.close()
