"""Deterministic synthetic captioned images: coloured shapes on noisy backgrounds.

Every scene is a background plus one or two objects, each object a shape with a
colour, a size and a cell of a 3x3 grid. Captions are generated from the same
attributes in English and Chinese, e.g.

    "a small red circle at the top left on a gray background"
    "左上角的一个红色小圆形，灰色背景"

so that tests and evaluations can check retrieval results against structured
ground truth. Generation is seeded per sample (`(seed, index)`), so results do not
depend on the number of worker processes. Drawing uses PIL only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 220, 40),
    "purple": (140, 55, 190),
    "orange": (245, 140, 25),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
# Muted backgrounds that none of the object colours equals.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (125, 125, 125),
    "beige": (212, 198, 160),
    "teal": (45, 118, 122),
    "brown": (110, 72, 45),
}

SHAPES_ZH = {
    "circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形",
    "hexagon": "六边形", "diamond": "菱形", "cross": "十字形", "heart": "心形",
}  # fmt: skip
COLORS_ZH = {
    "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
    "purple": "紫色", "orange": "橙色", "white": "白色", "black": "黑色",
}  # fmt: skip
SIZES_ZH = {"small": "小", "large": "大"}
POSITIONS_ZH = {
    "top left": "左上角", "top": "上方", "top right": "右上角",
    "left": "左侧", "center": "中间", "right": "右侧",
    "bottom left": "左下角", "bottom": "下方", "bottom right": "右下角",
}  # fmt: skip
BACKGROUNDS_ZH = {"gray": "灰色", "beige": "米色", "teal": "青色", "brown": "棕色"}

# English phrase for "where": "at the top left", "on the left", "in the center".
_POSITION_PHRASE = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}  # fmt: skip

# Object half-extent as a fraction of the image side; a grid cell is 1/3 wide.
_SIZE_RADIUS = {"small": 0.085, "large": 0.15}
_SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges
_ManifestFormat = Literal["jsonl", "csv", "parquet"]


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for value, allowed, name in (
            (self.shape, SHAPES, "shape"),
            (self.color, COLORS, "color"),
            (self.size, SIZES, "size"),
            (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")


@dataclass(frozen=True)
class Scene:
    """Structured attributes of one image. Objects are kept in grid reading order."""

    objects: tuple[ShapeObject, ...]
    background: str

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {list(BACKGROUNDS)}")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError("a scene holds one or two objects")
        positions = [o.position for o in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"objects share a grid cell: {positions}")
        ordered = tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position)))
        object.__setattr__(self, "objects", ordered)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        return cls(tuple(ShapeObject(**o) for o in data["objects"]), data["background"])


@dataclass
class Sample:
    image: Image.Image
    caption_en: str
    caption_zh: str
    attributes: Scene
    index: int
    render_seed: int

    def caption(self, lang: str = "en") -> str:
        return self.caption_zh if lang == "zh" else self.caption_en


# --------------------------------------------------------------------------- captions


def _object_en(obj: ShapeObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape} {_POSITION_PHRASE[obj.position]}"


def _object_zh(obj: ShapeObject) -> str:
    return f"{POSITIONS_ZH[obj.position]}的一个{COLORS_ZH[obj.color]}{SIZES_ZH[obj.size]}{SHAPES_ZH[obj.shape]}"


def caption_en(scene: Scene) -> str:
    """e.g. "a small red circle at the top left and a large blue square in the center on a gray background"."""
    objects = " and ".join(_object_en(o) for o in scene.objects)
    return f"{objects} on a {scene.background} background"


def caption_zh(scene: Scene) -> str:
    """e.g. "左上角的一个红色小圆形和中间的一个蓝色大正方形，灰色背景"."""
    objects = "和".join(_object_zh(o) for o in scene.objects)
    return f"{objects}，{BACKGROUNDS_ZH[scene.background]}背景"


def caption(scene: Scene, lang: str = "en") -> str:
    if lang == "en":
        return caption_en(scene)
    if lang == "zh":
        return caption_zh(scene)
    raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")


def class_prompt(color: str, shape: str, lang: str = "en") -> str:
    """Zero-shot class prompt: "a photo of a red circle." / "一张红色圆形的照片。"."""
    if lang == "zh":
        return f"一张{COLORS_ZH[color]}{SHAPES_ZH[shape]}的照片。"
    return f"a photo of a {color} {shape}."


def zero_shot_classes() -> list[tuple[str, str]]:
    """Every (color, shape) pair, in a fixed order."""
    return [(c, s) for c in COLORS for s in SHAPES]


def short_caption(scene: Scene, lang: str = "en", *, with_size: bool = False) -> str:
    """A less specific caption in the zero-shot prompt style (first object only).

    Mixing some of these into training teaches the text tower the prompt template
    used for zero-shot classification.
    """
    obj = scene.objects[0]
    if lang == "zh":
        size = SIZES_ZH[obj.size] if with_size else ""
        return f"一张{COLORS_ZH[obj.color]}{size}{SHAPES_ZH[obj.shape]}的照片。"
    size = f"{obj.size} " if with_size else ""
    return f"a photo of a {size}{obj.color} {obj.shape}."


def charset_zh() -> str:
    """Every character the Chinese captions and prompts can contain (for small vocabularies)."""
    parts: list[str] = []
    for table in (SHAPES_ZH, COLORS_ZH, SIZES_ZH, POSITIONS_ZH, BACKGROUNDS_ZH):
        parts.extend(table.values())
    parts.append("的一个和，背景张照片。")
    return "".join(sorted(set("".join(parts))))


# --------------------------------------------------------------------------- sampling


def random_scene(rng: np.random.Generator, *, num_objects: int = 1) -> Scene:
    positions = rng.choice(len(POSITIONS), size=num_objects, replace=False)
    objects = tuple(
        ShapeObject(
            shape=SHAPES[rng.integers(len(SHAPES))],
            color=list(COLORS)[rng.integers(len(COLORS))],
            size=SIZES[rng.integers(len(SIZES))],
            position=POSITIONS[int(p)],
        )
        for p in positions
    )
    return Scene(objects, list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))])


# --------------------------------------------------------------------------- rendering


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Vertices of `shape` centred at (cx, cy) with half-extent r; None for the circle."""

    def ring(radii: Sequence[float], start_deg: float) -> list[tuple[float, float]]:
        n = len(radii)
        pts = []
        for k, rad in enumerate(radii):
            a = math.radians(start_deg + 360.0 * k / n)
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return pts

    if shape == "circle":
        return None
    if shape == "square":
        pts = ring([r * 1.18] * 4, 45)  # corners at r*1.18 -> side ~1.67r, area like the circle
    elif shape == "triangle":
        pts = [(x, y + 0.18 * r) for x, y in ring([r * 1.2] * 3, -90)]
    elif shape == "star":
        pts = ring([r * 1.15, r * 0.48] * 5, -90)
    elif shape == "hexagon":
        pts = ring([r * 1.05] * 6, 0)
    elif shape == "diamond":
        pts = [(0.0, -r * 1.15), (r * 0.75, 0.0), (0.0, r * 1.15), (-r * 0.75, 0.0)]
    elif shape == "cross":
        a, w = r * 1.05, r * 0.36
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
    elif shape == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 15.0, (y + 2.5) * r / 15.0))
    else:  # pragma: no cover - ShapeObject validates names
        raise ValueError(shape)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in pts]


def _background(rng: np.random.Generator, name: str, side: int) -> np.ndarray:
    """Background colour with jitter and a random linear gradient, float32 HxWx3."""
    base = np.array(BACKGROUNDS[name], dtype=np.float32) + rng.uniform(-12, 12, size=3)
    theta = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0, 22)
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
    ramp = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    return base[None, None, :] + (strength * ramp)[:, :, None]


def render(
    attributes: Scene | Mapping[str, Any],
    *,
    seed: int,
    image_size: int = 64,
) -> Image.Image:
    """Draw a scene. Same (attributes, seed, image_size) -> identical pixels.

    `seed` drives only the nuisance factors (colour jitter, gradient, noise, position
    and size jitter, slight rotation), so two seeds give two variants of one scene.
    """
    scene = attributes if isinstance(attributes, Scene) else Scene.from_dict(attributes)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, image_size, 7])
    big = image_size * _SUPERSAMPLE
    canvas = Image.fromarray(np.clip(_background(rng, scene.background, big), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cell = big / 3.0
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        cx = (col + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        r = _SIZE_RADIUS[obj.size] * big * rng.uniform(0.92, 1.08)
        angle = math.radians(rng.uniform(-10, 10))
        fill = tuple(int(np.clip(c + rng.uniform(-18, 18), 0, 255)) for c in COLORS[obj.color])
        poly = _shape_polygon(obj.shape, cx, cy, r, angle)
        if poly is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32) + rng.normal(0, 5.0, size=(image_size, image_size, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- generation


def _two_object_indices(n: int, seed: int, ratio: float) -> set[int]:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"two_object_ratio must be in [0, 1], got {ratio}")
    k = int(round(n * ratio))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, n, 11])
    return {int(i) for i in rng.choice(n, size=k, replace=False)}


def make_sample(index: int, *, seed: int, image_size: int = 64, num_objects: int = 1) -> Sample:
    """Sample `index` of the stream for `seed` (independent of every other index)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), num_objects])
    scene = random_scene(rng, num_objects=num_objects)
    render_seed = int(rng.integers(0, 2**31 - 1))
    image = render(scene, seed=render_seed, image_size=image_size)
    return Sample(image, caption_en(scene), caption_zh(scene), scene, index, render_seed)


def _make_chunk(args: tuple[list[tuple[int, int]], int, int]) -> list[Sample]:
    jobs, seed, image_size = args
    return [make_sample(i, seed=seed, image_size=image_size, num_objects=k) for i, k in jobs]


def generate(
    n: int,
    *,
    seed: int,
    image_size: int = 64,
    two_object_ratio: float = 0.2,
    workers: int = 1,
) -> list[Sample]:
    """`n` captioned samples; exactly round(n * two_object_ratio) hold two objects.

    Deterministic for (n, seed, image_size, two_object_ratio), whatever `workers`.
    """
    two = _two_object_indices(n, seed, two_object_ratio)
    jobs = [(i, 2 if i in two else 1) for i in range(n)]
    if workers <= 1 or n < 256:
        return _make_chunk((jobs, seed, image_size))
    chunk = max(64, n // (workers * 8))
    parts = [(jobs[s : s + chunk], seed, image_size) for s in range(0, n, chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [s for part in pool.map(_make_chunk, parts) for s in part]


def manifest_row(sample: Sample, rel_path: str, lang: str = "en") -> dict[str, Any]:
    """Flat manifest columns; `shape2` ... are empty for single-object scenes."""
    scene = sample.attributes
    first = scene.objects[0]
    second = scene.objects[1] if scene.num_objects > 1 else None
    return {
        "path": rel_path,
        "caption": sample.caption(lang),
        "caption_en": sample.caption_en,
        "caption_zh": sample.caption_zh,
        "shape": first.shape,
        "color": first.color,
        "size": first.size,
        "position": first.position,
        "background": scene.background,
        "num_objects": scene.num_objects,
        "shape2": second.shape if second else "",
        "color2": second.color if second else "",
        "size2": second.size if second else "",
        "position2": second.position if second else "",
        "render_seed": sample.render_seed,
    }


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_manifest(rows: Sequence[Mapping[str, Any]], path: Path, fmt: _ManifestFormat) -> Path:
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    else:
        raise ValueError(f"manifest must be 'jsonl', 'csv', 'parquet' or None, got {fmt!r}")
    return path


def _write_chunk(args: tuple[list[tuple[int, int]], int, int, str, str, bool]) -> list[dict[str, Any]]:
    jobs, seed, image_size, out_dir, lang, sidecars = args
    out = Path(out_dir)
    rows = []
    for index, num_objects in jobs:
        sample = make_sample(index, seed=seed, image_size=image_size, num_objects=num_objects)
        rows.append(_write_sample(sample, out, lang, sidecars))
    return rows


def _write_sample(sample: Sample, out: Path, lang: str, sidecars: bool) -> dict[str, Any]:
    stem = f"img_{sample.index:05d}"
    (out / f"{stem}.png").write_bytes(png_bytes(sample.image))
    if sidecars:
        (out / f"{stem}.txt").write_text(sample.caption(lang) + "\n", encoding="utf-8")
    return manifest_row(sample, f"{stem}.png", lang)


def write_corpus(
    out_dir: str | Path,
    n: int,
    *,
    seed: int,
    lang: str = "en",
    sidecars: bool = True,
    manifest: _ManifestFormat | None = "jsonl",
    image_size: int = 64,
    two_object_ratio: float = 0.2,
    workers: int = 1,
) -> Path:
    """Write `img_00000.png` ... (the samples of `generate`) into `out_dir`, plus captions.

    Sidecars are `<stem>.txt` holding the caption in `lang`. The manifest is
    `out_dir/manifest.<fmt>` with one row per image (see `manifest_row`; `path` is
    relative to `out_dir`). `workers` > 1 renders and writes in processes; the
    files are identical either way. Returns `out_dir`.
    """
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    if manifest not in (None, "jsonl", "csv", "parquet"):
        raise ValueError(f"manifest must be 'jsonl', 'csv', 'parquet' or None, got {manifest!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    two = _two_object_indices(n, seed, two_object_ratio)
    jobs = [(i, 2 if i in two else 1) for i in range(n)]
    if workers <= 1 or n < 256:
        rows = _write_chunk((jobs, seed, image_size, str(out), lang, sidecars))
    else:
        chunk = max(64, n // (workers * 8))
        parts = [(jobs[s : s + chunk], seed, image_size, str(out), lang, sidecars) for s in range(0, n, chunk)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = [row for part in pool.map(_write_chunk, parts) for row in part]
    if manifest is not None:
        write_manifest(rows, out / f"manifest.{manifest}", manifest)
    return out
