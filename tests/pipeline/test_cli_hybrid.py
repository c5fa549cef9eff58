"""`mmrag search --target hybrid / --mmr / --min-relevance`, `mmrag facets` and `mmrag calibrate`."""

from __future__ import annotations

from mmrag.cli import main
from pipeline.conftest import GOOD_IMAGES
from pipeline.test_cli import run_json


def test_hybrid_facets_and_calibration_from_the_command_line(env, capsys):
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "--quiet"]) == 0
    capsys.readouterr()
    # a caption keyword finds its image first, whatever the random model's dense vectors say
    for query, path in [("tall", "sub/deeper/blue.PNG"), ("紫色", "中文/猫.png"), ("green", "sub/green.jpg")]:
        code, res = run_json(capsys, "search", query, "-c", "photos", "--target", "hybrid", "-k", "2")
        assert code == 0 and res["hits"][0]["path"] == path and res["hits"][0]["vector"] == "hybrid", (query, res)
    code, res = run_json(capsys, "search", "green", "-c", "photos", "--target", "hybrid", "--filter", "format=PNG")
    assert code == 0 and "sub/green.jpg" not in {h["path"] for h in res["hits"]}
    code, res = run_json(capsys, "search", "x", "-c", "photos", "--mmr", "--mmr-lambda", "0.3", "-k", "3")
    assert code == 0 and len({h["path"] for h in res["hits"]}) == 3

    assert main(["search", "--image", str(env["corpus"] / "red.png"), "-c", "photos", "--target", "hybrid"]) == 2
    assert "needs a text query" in capsys.readouterr().err
    assert main(["search", "x", "-c", "photos", "--min-relevance", "90"]) == 2
    assert "mmrag calibrate" in capsys.readouterr().err

    code, res = run_json(capsys, "facets", "format", "-c", "photos")
    formats = {}
    for rel in GOOD_IMAGES:
        fmt = "JPEG" if rel.endswith(".jpg") else "PNG"
        formats[fmt] = formats.get(fmt, 0) + 1
    assert code == 0 and {h["value"]: h["count"] for h in res["hits"]} == formats
    code, res = run_json(capsys, "facets", "format", "-c", "photos", "--filter", "has_caption=yes")
    assert sum(h["count"] for h in res["hits"]) == 4
    assert main(["facets", "caption", "-c", "photos"]) == 2
    assert "no payload index" in capsys.readouterr().err

    prompts = env["home"].parent / "prompts.txt"
    prompts.write_text("\n".join(f"a photo of thing {i}" for i in range(12)), encoding="utf-8")
    code, rec = run_json(capsys, "calibrate", "-c", "photos", "--prompts", str(prompts))
    assert code == 0 and rec["prompts"] == 12 and len(rec["image"]) == 101
    # at the 100th percentile only hits above every unrelated prompt's best score stay
    code, res = run_json(capsys, "search", "x", "-c", "photos", "--min-relevance", "100", "-k", "6")
    assert code == 0 and all(h["score"] >= rec["image"][100] for h in res["hits"])
