from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.tasks.templates import (
    EN_ENSEMBLE,
    TEMPLATE_SETS,
    ZH_ENSEMBLE,
    TemplateError,
    load_templates,
    normalize_template,
    render,
)


def test_builtin_sets() -> None:
    assert load_templates("en") == ["a photo of a {}."]
    assert load_templates("zh") == ["一张{}的照片。"]
    assert 8 <= len(EN_ENSEMBLE) <= 18 and len(set(EN_ENSEMBLE)) == len(EN_ENSEMBLE)
    assert len(ZH_ENSEMBLE) >= 3 and len(set(ZH_ENSEMBLE)) == len(ZH_ENSEMBLE)
    for name, templates in TEMPLATE_SETS.items():
        assert load_templates(name) == list(templates), name


def test_default_follows_language() -> None:
    assert load_templates(None, language="zh") == ["一张{}的照片。"]
    assert load_templates(None, language="en") == ["a photo of a {}."]


def test_label_placeholder_normalised_and_rendered() -> None:
    assert load_templates(["a {label} in {{braces}}."]) == ["a {} in {{braces}}."]
    assert render("a {} in {{braces}}.", "cat") == "a cat in {braces}."
    assert load_templates("art of the {}") == ["art of the {}"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("a photo.", "found 0"),
        ("a {} and a {}.", "found 2"),
        ("a {label} and {}", "found 2"),
        ("a {name}.", "only '{}' or '{label}'"),
        ("a {0}.", "only '{}' or '{label}'"),
        ("a {:>10}.", "only '{}' or '{label}'"),
        ("a {!r}.", "only '{}' or '{label}'"),
        ("a { photo", "malformed"),
    ],
)
def test_invalid_templates(bad: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match="template") as err:
        normalize_template(bad)
    assert fragment in str(err.value)


def test_unknown_set_and_empty_list() -> None:
    with pytest.raises(TemplateError, match="unknown template set 'fr'.*en-ensemble"):
        load_templates("fr")
    with pytest.raises(TemplateError, match="no templates"):
        load_templates([])


def test_templates_file_lines_and_json(tmp_path: Path) -> None:
    lines = tmp_path / "t.txt"
    lines.write_text("# my prompts\n\na sketch of a {}.\n  a {label} at night.  \na sketch of a {}.\n", encoding="utf-8")
    assert load_templates(templates_file=lines) == ["a sketch of a {}.", "a {} at night."]  # duplicates dropped
    js = tmp_path / "t.json"
    js.write_text('["一幅{}的水彩画。"]', encoding="utf-8")
    assert load_templates(templates_file=js) == ["一幅{}的水彩画。"]
    js.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(TemplateError, match="list of strings"):
        load_templates(templates_file=js)
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="exactly one placeholder"):
        load_templates(templates_file=bad)
    with pytest.raises(TemplateError, match="not both"):
        load_templates("en", templates_file=lines)
