"""Prompt templates for zero-shot classification and tagging.

A template turns a label into a caption-like sentence ("a photo of a {}.");
CLIP was trained on captions, not bare words, so prompts score better than
labels alone, and averaging the embeddings of several prompts per label (an
ensemble) smooths out the quirks of any single phrasing.

Built-in sets: `en`, `en-ensemble`, `zh`, `zh-ensemble`. A template holds
exactly one placeholder, `{}` or `{label}`; `{label}` is normalised to `{}`
on load. Literal braces are written doubled (`{{`, `}}`) as in `str.format`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmrag.errors import UsageError

EN_SINGLE = ("a photo of a {}.",)

# Our own selection, in the spirit of CLIP's ImageNet prompt engineering: vary
# image quality, framing, size and medium so that no single photographic
# condition dominates the label embedding.
EN_ENSEMBLE = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a good photo of the {}.",
    "a bad photo of a {}.",
    "a drawing of a {}.",
    "a rendering of the {}.",
)

ZH_SINGLE = ("一张{}的照片。",)

ZH_ENSEMBLE = (
    "一张{}的照片。",
    "{}的照片。",
    "一张模糊的{}的照片。",
    "一张低分辨率的{}的照片。",
    "一张明亮的{}的照片。",
    "一张昏暗的{}的照片。",
    "一张{}的特写照片。",
    "一张裁剪过的{}的照片。",
    "一幅{}的画。",
    "这是一张{}的图片。",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "en": EN_SINGLE,
    "en-ensemble": EN_ENSEMBLE,
    "zh": ZH_SINGLE,
    "zh-ensemble": ZH_ENSEMBLE,
}


class TemplateError(UsageError):
    """A template set name is unknown or a template is malformed."""


def normalize_template(template: str) -> str:
    """Validate one template and return it with its placeholder written as `{}`.

    Raises TemplateError unless the template has exactly one placeholder,
    `{}` or `{label}`, without conversion or format spec.
    """
    if not isinstance(template, str):
        raise TemplateError(f"template must be a string, got {type(template).__name__}: {template!r}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces
        raise TemplateError(f"template {template!r} is malformed ({exc}); write literal braces as '{{{{' and '}}}}'") from exc
    fields = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    if len(fields) != 1:
        raise TemplateError(
            f"template {template!r} must contain exactly one placeholder '{{}}' or '{{label}}', found {len(fields)}"
        )
    name, spec, conv = fields[0]
    if name not in ("", "label") or spec or conv:
        raise TemplateError(
            f"template {template!r} has placeholder {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}; "
            "only '{}' or '{label}' is allowed"
        )
    return template.replace("{label}", "{}") if name == "label" else template


def render(template: str, label: str) -> str:
    """The prompt for `label` (template must be normalised)."""
    return template.format(label)


def default_template_set(language: str) -> str:
    """Name of the default set for a model's prompt language."""
    return "zh" if language == "zh" else "en"


def read_templates_file(path: str | Path) -> list[str]:
    """Templates from a file: a JSON list of strings, or one template per line.

    In the line format, blank lines and lines starting with `#` are ignored.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise TemplateError(f"{path}: a JSON templates file must hold a list of strings")
        return list(data)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def load_templates(
    name_or_list: str | Sequence[str] | None = None,
    templates_file: str | Path | None = None,
    *,
    language: str = "en",
) -> list[str]:
    """Resolve templates to a validated list of `{}` templates.

    - `templates_file` given: its templates (then `name_or_list` must be None).
    - a string naming a built-in set (`en`, `en-ensemble`, `zh`, `zh-ensemble`): that set.
    - any other string containing a placeholder: that single template.
    - a sequence of strings: those templates.
    - None: the default set for `language`.
    """
    if templates_file is not None:
        if name_or_list is not None:
            raise TemplateError("pass either a template set/list or a templates file, not both")
        raw: Iterable[str] = read_templates_file(templates_file)
        origin = str(templates_file)
    elif name_or_list is None:
        raw = TEMPLATE_SETS[default_template_set(language)]
        origin = default_template_set(language)
    elif isinstance(name_or_list, str):
        if name_or_list in TEMPLATE_SETS:
            raw = TEMPLATE_SETS[name_or_list]
        elif "{" in name_or_list:
            raw = [name_or_list]
        else:
            raise TemplateError(
                f"unknown template set {name_or_list!r}; built-in sets: {', '.join(sorted(TEMPLATE_SETS))} "
                "(or give a template containing '{}')"
            )
        origin = name_or_list
    else:
        raw = list(name_or_list)
        origin = "list"
    templates = [normalize_template(t) for t in raw]
    if not templates:
        raise TemplateError(f"no templates in {origin!r}")
    # Duplicates would silently weight one phrasing twice in the ensemble mean.
    seen: set[str] = set()
    unique = [t for t in templates if not (t in seen or seen.add(t))]
    return unique
