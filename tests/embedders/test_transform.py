"""ClipTransform gives the image processor's output bit for bit, pickles small, and runs without torch."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.embedders.hf import quiet_transformers
from mmrag.embedders.transform import ClipTransform

REFERENCE = Path(__file__).resolve().parents[2] / "mmrag" / "assets" / "reference"
SIZES = [(7, 5), (32, 32), (33, 32), (300, 40), (40, 300), (225, 224), (333, 517), (1200, 901)]
MODES = ["RGB", "L", "RGBA", "LA", "P", "PA-trns", "CMYK"]


def _image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + size[0] * 7919 + size[1])
    rgb = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    # a smooth ramp under the noise, so resizes see structure and not only noise
    rgb[..., 0] = (rgb[..., 0] // 4 + np.linspace(0, 190, size[0], dtype=np.uint8)[None, :]).astype(np.uint8)
    base = Image.fromarray(rgb, "RGB")
    if mode == "PA-trns":  # palette with a transparent index
        pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal.info["transparency"] = 3
        return pal
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8), "L")
        out = base.convert(mode)
        out.putalpha(alpha)
        return out
    return base.convert(mode)


def _processors() -> dict[str, object]:
    from transformers import AutoImageProcessor, ChineseCLIPImageProcessorPil, CLIPImageProcessorPil

    with quiet_transformers():
        return {
            "openai-clip-defaults": CLIPImageProcessorPil(),  # shortest edge 224, crop 224, bicubic
            "chinese-clip-defaults": ChineseCLIPImageProcessorPil(),
            "chinese-clip-squash": ChineseCLIPImageProcessorPil(size={"height": 224, "width": 224}, do_center_crop=False),
            "clip-bilinear-odd-crop": CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 31, "width": 45},
                                                            resample=Image.Resampling.BILINEAR),
            "bundled-en": AutoImageProcessor.from_pretrained(REFERENCE / "clip-shapes-en"),
            "bundled-zh": AutoImageProcessor.from_pretrained(REFERENCE / "chinese-clip-shapes-zh"),
        }


PROCESSORS = _processors()


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_bit_identical_to_the_processor(name: str) -> None:
    processor = PROCESSORS[name]
    transform = ClipTransform.from_processor(processor)
    assert transform is not None
    for size in SIZES:
        for mode in MODES:
            image = _image(size, mode)
            expected = processor(images=image, return_tensors="np")["pixel_values"][0]
            got = transform(image)
            assert got.dtype == np.float32 and got.shape == expected.shape, (size, mode)
            assert np.array_equal(got, expected), f"{name} {size} {mode}: max diff {np.abs(got - expected).max()}"


def test_the_embedders_use_it(tiny_clip_dir: Path, tiny_chinese_clip_dir: Path) -> None:
    from mmrag.embedders import load_embedder

    for folder in (tiny_clip_dir, tiny_chinese_clip_dir):
        embedder = load_embedder(str(folder), device="cpu", backend="torch")
        assert isinstance(embedder.portable_preprocess, ClipTransform)
        image = _image((90, 61), "RGBA")
        expected = embedder.image_processor(images=image, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(embedder.preprocess(image), expected)


def test_table_is_the_processors_rescale_and_normalize() -> None:
    processor = PROCESSORS["openai-clip-defaults"]
    table = ClipTransform.from_processor(processor).table
    assert table.shape == (3, 256) and table.dtype == np.float32
    mean, std = np.float32(processor.image_mean), np.float32(processor.image_std)
    scaled = (np.arange(256, dtype=np.float64) * processor.rescale_factor).astype(np.float32)
    np.testing.assert_array_equal(table, (scaled[None, :] - mean[:, None]) / std[:, None])


@pytest.mark.parametrize(
    "change, why",
    [
        ({"do_pad": True}, "padding"),
        ({"reducing_gap": 2.0}, "reducing gap"),
        ({"size": {"shortest_edge": 224, "longest_edge": 300}}, "longest edge"),
        ({"crop_size": {"height": 256, "width": 224}}, "crop larger than the resize: the processor zero-pads"),
        ({"do_center_crop": False}, "shortest-edge resize without a crop: ragged shapes"),
        ({"do_resize": False}, "no resize: output follows the input size"),
        ({"do_convert_rgb": False}, "no RGB conversion"),
    ],
)
def test_unsupported_configurations_fall_back(change: dict, why: str) -> None:
    from transformers import CLIPImageProcessorPil

    with quiet_transformers():
        processor = CLIPImageProcessorPil()
    for key, value in change.items():
        setattr(processor, key, value)
    assert ClipTransform.from_processor(processor) is None, why


def test_an_overridden_step_falls_back() -> None:
    from transformers import CLIPImageProcessorPil

    class Sharpened(CLIPImageProcessorPil):
        def resize(self, image, size, resample=None, reducing_gap=None, **kwargs):  # type: ignore[override]
            return super().resize(image, size, resample, reducing_gap, **kwargs)

    with quiet_transformers():
        assert ClipTransform.from_processor(Sharpened()) is None
    assert ClipTransform.from_processor(object()) is None


def test_pickles_small_and_runs_in_a_process_without_torch(tmp_path: Path) -> None:
    transform = ClipTransform.from_processor(PROCESSORS["openai-clip-defaults"])
    blob = pickle.dumps(transform)
    assert len(blob) < 8 * 1024
    image = _image((640, 480), "RGB")
    image.save(tmp_path / "a.png")
    (tmp_path / "t.pkl").write_bytes(blob)
    script = (
        "import pickle, sys, numpy as np; from PIL import Image\n"
        f"t = pickle.load(open({str(tmp_path / 't.pkl')!r}, 'rb'))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, t(Image.open({str(tmp_path / 'a.png')!r})))\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # neither torch nor transformers was imported
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), transform(image))
