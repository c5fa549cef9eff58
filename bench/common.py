"""Shared helpers for the benchmarks: timing, peak RSS, corpora, random-weight model dirs.

Everything generated here is deterministic for its parameters and cached on disk
(a `.done.json` marker records the parameters), so repeated runs reuse it.
Nothing here imports the store: the GPU machine may lack qdrant.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTO_SIZE = (4000, 3000)  # 12 MP, like a phone camera
ORIENTATION_TAG = 0x0112


# --------------------------------------------------------------------------- timing / memory


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """`with timed() as t: ...` then `t["s"]` holds the wall-clock seconds."""
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "mmrag-bench-cache"


def _is_cached(folder: Path, params: dict[str, Any]) -> bool:
    marker = folder / ".done.json"
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _mark_cached(folder: Path, params: dict[str, Any]) -> None:
    (folder / ".done.json").write_text(json.dumps(params, sort_keys=True))


def _pool_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    if workers <= 1 or len(jobs) < 4:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (workers * 4))))


# --------------------------------------------------------------------------- images


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB image whose JPEG size and decode cost resemble a photo's.

    Smooth gradient + blurred shapes (low frequencies) drawn small and upscaled,
    then mid-frequency texture and sensor-like noise (what makes photos big).
    """
    lw, lh = max(8, width // 8), max(8, height // 8)
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    t = (np.cos(angle) * xx / lw + np.sin(angle) * yy / lh + 1.0) / 2.0
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    low = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(low)
    for _ in range(int(rng.integers(5, 12))):
        x0, y0 = rng.uniform(-0.2, 1.0) * lw, rng.uniform(-0.2, 1.0) * lh
        w, h = rng.uniform(0.05, 0.5) * lw, rng.uniform(0.05, 0.5) * lh
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    low = low.filter(ImageFilter.GaussianBlur(radius=max(1.0, lw / 200)))
    big = np.asarray(low.resize((width, height), Image.BICUBIC), dtype=np.int16)
    # mid-frequency texture (foliage, fabric) at 1/4 scale, then per-pixel noise from a tile
    tw, th = max(2, width // 4), max(2, height // 4)
    texture = rng.normal(0, 14, size=(th, tw)).astype(np.float32)
    texture_img = Image.fromarray(np.clip(texture + 128, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    big = big + (np.asarray(texture_img, dtype=np.int16) - 128)[..., None]
    tile = rng.integers(-10, 11, size=(min(height, 256), min(width, 256), 3), dtype=np.int16)
    reps = (math.ceil(height / tile.shape[0]), math.ceil(width / tile.shape[1]), 1)
    big = big + np.tile(tile, reps)[:height, :width]
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def _exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


def _write_photo(job: tuple[Path, int, int, int, int]) -> None:
    path, seed, index, width, height = job
    rng = np.random.default_rng([seed, index])
    img = photo_like(rng, width, height)
    # every 4th photo carries an EXIF rotation, as portrait phone shots do
    orientation = (6, 3, 8)[(index // 4) % 3] if index % 4 == 3 else 1
    kwargs: dict[str, Any] = {"quality": 90}
    if orientation != 1:
        kwargs["exif"] = _exif_with_orientation(orientation)
    img.save(path, format="JPEG", **kwargs)


def make_photo_corpus(folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = PHOTO_SIZE, workers: int = 0) -> Path:
    """`n` photo-like JPEGs (quality 90, some with EXIF orientation) in `folder`."""
    folder = Path(folder)
    params = {"kind": "photos", "n": n, "seed": seed, "size": list(size), "version": 1}
    if _is_cached(folder, params):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    jobs = [(folder / f"photo_{i:05d}.jpg", seed, i, size[0], size[1]) for i in range(n)]
    _pool_map(_write_photo, jobs, workers or os.cpu_count() or 1)
    _mark_cached(folder, params)
    return folder


def _write_mixed(job: tuple[Path, int, int]) -> None:
    path, seed, index = job
    rng = np.random.default_rng([seed, index, 7])
    if rng.random() < 0.6:
        width, height = (int(v) for v in rng.integers(64, 401, size=2))
    else:
        width, height = (int(v) for v in rng.integers(800, 2001, size=2))
    img = photo_like(rng, width, height)
    suffix = path.suffix.lower()
    if suffix == ".png":
        if index % 10 == 0:  # a few transparent PNGs (logos, screenshots)
            alpha = Image.new("L", img.size, 255)
            ImageDraw.Draw(alpha).ellipse([0, 0, width // 2, height // 2], fill=0)
            img.putalpha(alpha)
        img.save(path, format="PNG", compress_level=6)
    elif suffix == ".webp":
        img.save(path, format="WEBP", quality=85, method=0)
    else:
        img.save(path, format="JPEG", quality=88)


def make_mixed_corpus(folder: Path, n: int, *, seed: int = 0, workers: int = 0) -> Path:
    """`n` images: ~60% small (64–400 px), ~40% medium (800–2000 px); PNG / JPEG / WebP in turn."""
    folder = Path(folder)
    params = {"kind": "mixed", "n": n, "seed": seed, "version": 1}
    if _is_cached(folder, params):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file() and old.name != ".done.json":
            old.unlink()
    suffixes = (".jpg", ".png", ".webp")
    jobs = [(folder / f"img_{i:05d}{suffixes[i % 3]}", seed, i) for i in range(n)]
    _pool_map(_write_mixed, jobs, workers or os.cpu_count() or 1)
    _mark_cached(folder, params)
    return folder


def make_small_corpus(folder: Path, n: int, *, seed: int = 0) -> Path:
    """`n` tiny PNGs (24–64 px) for memory-scaling runs, spread over sub-folders of 1000."""
    folder = Path(folder)
    params = {"kind": "small", "n": n, "seed": seed, "version": 1}
    if _is_cached(folder, params):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, n, 3])
    for i in range(n):
        side = int(rng.integers(24, 65))
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        sub = folder / f"part_{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(sub / f"s_{i:06d}.png", compress_level=1)
    _mark_cached(folder, params)
    return folder


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".png", ".webp"))


# --------------------------------------------------------------------------- captions

_WORDS = (
    "a photo of the red car parked near an old stone bridge over a quiet river at sunset with "
    "two children playing football on green grass while their dog watches from under a tall tree "
    "and clouds gather above the distant snowy mountains beside a small wooden cabin"
).split()


def mixed_captions(n: int, *, seed: int = 0) -> list[str]:
    """Captions of realistic, mixed lengths: mostly 3–15 words, a few long (up to ~60 words)."""
    rng = np.random.default_rng([seed, n, 5])
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 16)) if rng.random() < 0.85 else int(rng.integers(20, 61))
        start = int(rng.integers(0, len(_WORDS)))
        out.append(" ".join(_WORDS[(start + k) % len(_WORDS)] for k in range(length)))
    return out


# --------------------------------------------------------------------------- models

ARCHS: dict[str, dict[str, Any]] = {
    # CLIPConfig() defaults are ViT-B/32; spelled out so the cache key is explicit.
    "b32": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=224),
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        projection_dim=512,
    ),
    # rclip's own model is ViT-B-32-256 (open_clip, 256-px input): the same tower at 256 px,
    # so mmrag and rclip run the same weights on the same corpora.
    "b32-256": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=256),
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        projection_dim=512,
    ),
    "l14": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        projection_dim=768,
    ),
}
CLIP_VOCAB = 49408  # the released models' vocabulary: keeps the parameter count (and RSS) real
TEXT_CONTEXT = 77


def make_clip_dir(cache_dir: Path, arch: str, *, seed: int = 0) -> Path:
    """A random-weight CLIP checkpoint of architecture `arch` ("b32", "l14" or "tiny").

    Saved with `save_pretrained` next to a real `CLIPProcessor` (BPE tokenizer from
    `write_clip_tokenizer`, OpenAI image preprocessing), so `load_embedder(dir)`
    takes the product's real path. Speed does not depend on the weight values.
    """
    cache_dir = Path(cache_dir)
    out = cache_dir / f"clip-{arch}-seed{seed}"
    params = {"arch": arch, "seed": seed, "version": 1}
    if _is_cached(out, params):
        return out
    if arch == "tiny":
        from mmrag.testing.tiny_models import make_tiny_clip

        make_tiny_clip(out, seed=seed)
        _mark_cached(out, params)
        return out
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(['tiny', *ARCHS])}")
    from mmrag.embedders.hf import quiet_transformers
    from mmrag.embedders.tokenizers import vocab_size, write_clip_tokenizer

    with quiet_transformers():
        import torch
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    spec = ARCHS[arch]
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(out, model_max_length=TEXT_CONTEXT)
    n_tok = vocab_size(out)
    bos_id, eos_id = n_tok - 2, n_tok - 1
    config = CLIPConfig(
        text_config=dict(
            vocab_size=max(CLIP_VOCAB, n_tok),
            max_position_embeddings=TEXT_CONTEXT,
            projection_dim=spec["projection_dim"],
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
            **spec["text"],
        ),
        vision_config=dict(projection_dim=spec["projection_dim"], **spec["vision"]),
        projection_dim=spec["projection_dim"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    model.save_pretrained(out)
    size = spec["vision"]["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    with quiet_transformers():
        tokenizer = CLIPTokenizer.from_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    _mark_cached(out, params)
    return out


# --------------------------------------------------------------------------- subprocess phases


def write_json(data: Any, path: Path) -> None:
    """A bench report as indented UTF-8 JSON at `path` (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def run_phase(module: str, phase: str, params: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
    """Run `python -m module --phase NAME --phase-args JSON` in a fresh process.

    A fresh process per measurement gives each phase its own peak RSS. The child
    prints its result as the last line of stdout, as JSON.
    """
    cmd = [sys.executable, "-m", module, "--phase", phase, "--phase-args", json.dumps(params)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO_ROOT), env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"phase {phase!r} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean / min row-wise cosine between two sets of vectors (any norm)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = num / np.maximum(den, 1e-12)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "n": int(len(cos))}
