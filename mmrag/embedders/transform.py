"""A CLIP image processor's PIL path as a small picklable object.

`ClipTransform.from_processor(processor)` reads a transformers CLIP / Chinese-CLIP
image processor (PIL backend) and returns a transform that gives the same float32
array, bit for bit: the same PIL resize, the same centre crop, and a lookup table
made by running the processor's own `rescale` and `normalize` on every byte value.
Those two steps are elementwise, so the table is exact by construction.

Why it exists:
- it imports only PIL and numpy, so decode worker *processes* can run it without
  loading torch or transformers, and it pickles in a few kilobytes;
- it holds the GIL for far less time than the processor's per-call Python (argument
  validation, BatchFeature), which is what stops decode threads scaling on many cores.

Anything the table cannot express (padding, reducing_gap, longest_edge, another
backend or an overridden step) makes `from_processor` return None, and callers keep
using the processor itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from PIL import Image

from mmrag.corpus.decode import to_rgb


def ensure_rgb(image: Image.Image) -> Image.Image:
    """RGB version of an image by ingestion's colour rule (`mmrag.corpus.decode.to_rgb`).

    Transparency on white, 16-bit scaled rather than clipped: the one rule, so an image
    preprocessed here and one decoded by ingestion give the same pixels.
    """
    return to_rgb(image)


@dataclass(frozen=True, eq=False)
class ClipTransform:
    """resize (shortest edge or fixed size) -> centre crop -> per-channel byte lookup."""

    shortest_edge: int | None  # resize so the shorter side has this length...
    size: tuple[int, int] | None  # ...or to exactly (height, width)
    resample: int
    crop: tuple[int, int] | None  # (height, width) centre crop, never larger than the resize
    table: np.ndarray  # (3, 256) float32: rescale + normalize of each byte value, per channel

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step: transformers' `get_resize_output_image_size` formula."""
        if self.size is not None:
            return self.size[1], self.size[0]
        assert self.shortest_edge is not None
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = ensure_rgb(image)
        size = self.resized_size(image.width, image.height)
        if size != image.size:
            image = image.resize(size, resample=self.resample)
        if self.crop is not None:
            crop_h, crop_w = self.crop
            top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
            image = image.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(image)
        out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return out

    @classmethod
    def from_processor(cls, processor: Any) -> ClipTransform | None:
        """The exact transform of a PIL-backend CLIP-style image processor, or None if unsupported."""
        try:
            from transformers.image_processing_backends import PilBackend
        except ImportError:
            return None
        kind = type(processor)
        if not isinstance(processor, PilBackend):
            return None
        processor = cast(Any, processor)  # a CLIP-style processor: its settings are plain attributes
        # Only the stock steps: an override could do anything the table does not capture.
        for step in ("_preprocess", "resize", "center_crop", "rescale", "normalize", "process_image"):
            if getattr(kind, step, None) is not getattr(PilBackend, step, None):
                return None
        if getattr(processor, "do_pad", False) or getattr(processor, "reducing_gap", None) is not None:
            return None
        if not getattr(processor, "do_convert_rgb", True):
            return None  # such a processor would see non-RGB modes we convert first
        resample = processor.resample
        if not isinstance(resample, int):
            return None

        shortest_edge = size = None
        if processor.do_resize:
            given = {k: v for k, v in dict(processor.size or {}).items() if v is not None}
            if set(given) == {"shortest_edge"}:
                shortest_edge = int(given["shortest_edge"])
            elif set(given) == {"height", "width"}:
                size = (int(given["height"]), int(given["width"]))
            else:
                return None
        else:
            return None  # the output size would follow each input: not a batchable CLIP input

        crop = None
        if processor.do_center_crop:
            crop_size = dict(processor.crop_size or {})
            crop = (int(crop_size["height"]), int(crop_size["width"]))
            limit = (shortest_edge, shortest_edge) if shortest_edge is not None else size
            assert limit is not None  # one of the two resize forms was set above
            if crop[0] > limit[0] or crop[1] > limit[1]:
                return None  # the processor would zero-pad
        elif size is None:
            return None  # shortest-edge resize without a crop leaves ragged shapes

        # Every byte value, in each channel, through the processor's own elementwise steps.
        ramp = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()
        values: np.ndarray = ramp
        if processor.do_rescale:
            values = processor.rescale(values, processor.rescale_factor)
        if processor.do_normalize:
            values = processor.normalize(values, processor.image_mean, processor.image_std)
        table = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(3, 256))
        return cls(shortest_edge=shortest_edge, size=size, resample=int(resample), crop=crop, table=table)
