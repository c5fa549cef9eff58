"""ONNX Runtime backend for transformers CLIP / Chinese-CLIP models.

Two halves:

* `export_model` (needs torch + transformers, once per model): exports the vision and
  text towers with `torch.onnx.export`, saves the tokenizer as `tokenizer.json` and the
  image processor as a `ClipTransform` table, into a cache directory keyed by the
  model's content hash and `EXPORTER_VERSION`. Optionally an int8 copy made with ONNX
  Runtime's dynamic quantization (int8 weights, activations quantized per call).
* `OnnxClipEmbedder` (needs only onnxruntime, `tokenizers`, numpy and PIL): runs a cached
  export. A query process that finds its export cached never imports torch or
  transformers, which is what makes a cold `mmrag search` start in about a second.

Where the cache lives (`export_root`): next to a local model directory
(`<dir>/.mmrag-onnx/`) when that directory is writable, else under the caller's cache
directory (`MMRAG_HOME/cache/onnx`): bundled models inside the package, hub models
(whose snapshots belong to the HF cache) and read-only directories.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.embedders.base import BackendUnavailable, BatchedImages, BatchedTexts, ModelInfo, pixel_batch
from mmrag.embedders.transform import ClipTransform

log = logging.getLogger(__name__)

# Bump when the exported graphs or the files beside them change: old caches are then ignored.
EXPORTER_VERSION = 2  # 2: the vision graph computes the last layer for the class token only
OPSET = 17
LOCAL_CACHE_DIR = ".mmrag-onnx"
# What ModelInfo.quantization records for ORT's dynamic int8. Not "int8": that value means the
# torch.ao int8 of earlier mmrag versions, whose vectors differ from these.
ORT_INT8 = "int8-onnx"

_VISION, _TEXT = "vision", "text"
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


# --- cache location and key -----------------------------------------------------------------
def _file_digest(path: Path, memo: dict[str, Any]) -> str:
    """sha256 of a file, memoised by (size, mtime) so that a big checkpoint is read once."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    entry = memo.get(str(path))
    if entry and entry[:2] == stamp:
        return entry[2]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    memo[str(path)] = [*stamp, h.hexdigest()]
    return h.hexdigest()


def model_hash(model_dir: str | Path, memo_file: Path | None = None) -> str:
    """Content hash of a saved model: its top-level config, weight and tokenizer files."""
    model_dir = Path(model_dir)
    memo: dict[str, Any] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(_MODEL_FILE_SUFFIXES))
    if not files:
        raise ValueError(f"{model_dir} holds no model files to export")
    for p in files:
        h.update(f"{p.name}\0{_file_digest(p.resolve(), memo)}\n".encode())
    if memo_file is not None:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(memo_file, json.dumps(memo))
        except OSError:  # a read-only cache only costs the re-hash
            pass
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def local_model_dir(load_path: str) -> Path:
    """The directory holding a model: itself, or the hub snapshot (from the local HF cache when offline)."""
    path = Path(load_path).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - ships with transformers
        raise BackendUnavailable("the onnx backend needs huggingface_hub to find hub models") from e
    return Path(snapshot_download(load_path))


def export_root(model_dir: Path, cache_dir: Path | None, *, beside_model: bool) -> Path:
    """Where exports of `model_dir` go: beside it when allowed and writable, else `cache_dir`."""
    if beside_model and _writable_dir(model_dir):
        return model_dir / LOCAL_CACHE_DIR
    if cache_dir is None:
        raise ValueError(f"{model_dir} is not writable and no ONNX cache directory was given")
    return Path(cache_dir)


def export_dir_for(model_dir: Path, root: Path) -> Path:
    digest = model_hash(model_dir, memo_file=root / "hashes.json")
    return root / f"{digest[:24]}-e{EXPORTER_VERSION}"


# --- export (torch) ---------------------------------------------------------------------------
def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(
            "exporting a model to ONNX needs torch and transformers (a cached export does not); "
            f"install them or copy an existing export: {e}"
        ) from e


def export_model(source: str | Path, out_dir: str | Path, *, backend: str) -> Path:
    """Export the towers, tokenizer and preprocessing of a CLIP-family model into `out_dir`.

    Written to a temporary directory and renamed into place, so a reader never sees a
    half-written export and two exporters racing both end with a complete one.
    """
    _require_torch()
    import warnings

    import torch

    from mmrag.embedders.hf import (
        _UNSET_MAX_LENGTH,
        CHINESE_CLIP_TEXT_LENGTH,
        _model_classes,
        projected_features,
        quiet_transformers,
    )

    out = Path(out_dir)
    if (out / "meta.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    try:
        with quiet_transformers():
            from transformers import AutoProcessor

            # eager attention: one plain graph that every ORT provider runs (equal to sdpa within 1e-6)
            model = _model_classes(backend).from_pretrained(str(source), attn_implementation="eager").eval()
            processor = AutoProcessor.from_pretrained(str(source))
        tokenizer = processor.tokenizer
        transform = ClipTransform.from_processor(processor.image_processor)
        if transform is None:
            raise ValueError(f"{source}: its image processor has steps the onnx backend cannot reproduce; use --backend torch")
        if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ValueError(f"{source}: the onnx backend needs a fast (tokenizers) tokenizer; use --backend torch")
        config = model.config
        uses_token_types = backend == "hf-chinese-clip"
        text_positions = int(config.text_config.max_position_embeddings)
        limit = int(tokenizer.model_max_length)
        if limit >= _UNSET_MAX_LENGTH:
            limit = CHINESE_CLIP_TEXT_LENGTH if uses_token_types else text_positions
        max_len = min(limit, text_positions)
        image_size = int(config.vision_config.image_size)

        class Vision(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixel_values):
                return projected_features(self.model.get_image_features(pixel_values=pixel_values))

        vision, vision_graph = class_token_vision(model, image_size), "class-token-last-layer"
        if vision is None:
            vision, vision_graph = Vision(), "full"

        class Text(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
                return projected_features(
                    self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kw)
                )

        # A padded dummy batch: masks built from data must stay data-dependent in the trace.
        enc = tokenizer(["a photo", "a photo of a cat on a mat"], padding="longest", return_tensors="pt")
        text_inputs = [enc["input_ids"], enc["attention_mask"]]
        text_names = ["input_ids", "attention_mask"]
        if uses_token_types:
            text_inputs.append(torch.zeros_like(enc["input_ids"]))
            text_names.append("token_type_ids")
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python bools in transformers' code
            torch.onnx.export(
                vision, (torch.zeros(2, 3, image_size, image_size),), str(tmp / f"{_VISION}.onnx"),
                input_names=["pixel_values"], output_names=["embeds"],
                dynamic_axes={"pixel_values": {0: "batch"}, "embeds": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
            torch.onnx.export(
                Text(), tuple(text_inputs), str(tmp / f"{_TEXT}.onnx"),
                input_names=text_names, output_names=["embeds"],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in text_names}, "embeds": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "transform.json").write_text(json.dumps({
            "shortest_edge": transform.shortest_edge,
            "size": list(transform.size) if transform.size else None,
            "resample": transform.resample,
            "crop": list(transform.crop) if transform.crop else None,
            "table": transform.table.tolist(),
        }), encoding="utf-8")
        meta = {
            "exporter_version": EXPORTER_VERSION,
            "torch": torch.__version__,
            "source": str(source),
            "backend": backend,
            "dim": int(config.projection_dim),
            "image_size": image_size,
            "vision_graph": vision_graph,
            "vision_tokens": (image_size // int(config.vision_config.patch_size)) ** 2 + 1,
            "logit_scale": float(model.logit_scale.detach().float().exp().item()),
            "max_text_length": max_len,
            "pad_id": int(tokenizer.pad_token_id),
            "pad_token": str(tokenizer.pad_token),
            "text_inputs": text_names,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: keep its export
            if not (out / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def class_token_vision(model: Any, image_size: int, tolerance: float = 1e-5) -> Any:
    """The vision tower with its last layer computed for the class token alone, or None.

    A CLIP image embedding is the class token after the last layer, so that layer's
    queries, attention output and MLP for the other tokens are thrown away; only its keys
    and values need every token. Computing just the class token there saves about 1/12 of
    a 12-layer ViT (bench/onnx_speed.py: ViT-B/32 6-9 % faster in ORT). The module is
    checked against the model's own `get_image_features` on random pixels; any other
    layout, or a difference above `tolerance`, gives None, and the caller exports the
    full tower.
    """
    import torch

    from mmrag.embedders.hf import projected_features

    # Any other missing or different part fails or differs in the probe below.
    try:
        tower = model.vision_model
        layers, projection = tower.encoder.layers, model.visual_projection
        last = layers[-1]
        attn = last.self_attn
        head_dim, scale = int(attn.head_dim), float(attn.scale)
    except (AttributeError, IndexError, TypeError):
        return None

    class ClassTokenVision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
            for layer in layers[:-1]:
                hidden = layer(hidden, None)
            normed = last.layer_norm1(hidden)
            batch, tokens, width = normed.shape
            # The same eager attention as transformers', with one query: the class token's.
            query = attn.q_proj(normed[:, :1]).view(batch, 1, -1, head_dim).transpose(1, 2)
            keys = attn.k_proj(normed).view(batch, tokens, -1, head_dim).transpose(1, 2)
            values = attn.v_proj(normed).view(batch, tokens, -1, head_dim).transpose(1, 2)
            weights = torch.softmax(torch.matmul(query, keys.transpose(2, 3)) * scale, dim=-1, dtype=torch.float32)
            mixed = torch.matmul(weights.to(query.dtype), values).transpose(1, 2).reshape(batch, 1, width)
            cls = hidden[:, :1] + attn.out_proj(mixed)
            cls = cls + last.mlp(last.layer_norm2(cls))
            return projection(tower.post_layernorm(cls[:, 0]))

    pruned = ClassTokenVision().eval()
    probe = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = projected_features(model.get_image_features(pixel_values=probe))
            got = pruned(probe)
    except Exception as exc:  # a layout this function does not know: export the full tower
        log.debug("class-token vision graph unavailable (%s); exporting the full tower", exc)
        return None
    if got.shape != expected.shape or float((got - expected).abs().max()) > tolerance * float(expected.abs().max()):
        log.debug("class-token vision graph differs from the model; exporting the full tower")
        return None
    return pruned


def quantized_path(export_dir: Path, tower: str) -> Path:
    """The int8 copy of one tower, made with ORT's dynamic quantization on first use."""
    target = export_dir / f"{tower}.int8.onnx"
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(dir=export_dir, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        # Signed int8 weights: the u8s8 kernels VNNI accelerates; MatMul/Gemm are the FLOPs of a ViT.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process is about static quantization
        try:
            quantize_dynamic(str(export_dir / f"{tower}.onnx"), tmp, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def ensure_export(
    load_path: str, *, backend: str, cache_dir: Path | None, beside_model: bool = True
) -> Path:
    """The export directory of a model, exporting it first when no current export is cached."""
    model_dir = local_model_dir(load_path)
    root = export_root(model_dir, cache_dir, beside_model=beside_model)
    target = export_dir_for(model_dir, root)
    if not (target / "meta.json").is_file():
        log.warning("exporting %s to ONNX (once; cached in %s)", load_path, target)
        export_model(model_dir, target, backend=backend)
    return target


# --- runtime (no torch) -----------------------------------------------------------------------
def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    pref = (device or "auto").lower()
    if pref == "cpu":
        return ["CPUExecutionProvider"]
    if pref.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"device {device!r} requested but onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if pref != "auto":
        raise ValueError(f"the onnx backend runs on 'auto', 'cpu' or 'cuda', not {device!r}")
    wanted = [p for p in ("CUDAExecutionProvider", "OpenVINOExecutionProvider") if p in available]
    return wanted + ["CPUExecutionProvider"]


# Tokens per vision call on the CPU provider. Activations of a few hundred tokens stay in the
# caches; a batch of 32 ViT-B/32 images (2,080 tokens) does not (bench/onnx_speed.py, 2 cores:
# ViT-B/32-256 at 8 images per call 8-12 % faster than at 32; ViT-B/16 flat from 2 to 8, slower above).
CPU_TOKENS_PER_CALL = 640


def cpu_images_per_call(tokens: int, batch_size: int) -> int:
    """The largest power of two of images whose tokens fit CPU_TOKENS_PER_CALL: at least 1, at most batch_size."""
    n = 1
    while n * 2 <= batch_size and n * 2 * tokens <= CPU_TOKENS_PER_CALL:
        n *= 2
    return n


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OnnxClipEmbedder(BatchedImages, BatchedTexts):
    """`Embedder` over an export from `export_model`, run by ONNX Runtime."""

    def __init__(
        self,
        export_dir: str | Path,
        *,
        model_id: str,
        device: str = "auto",
        quantize: str | None = None,
        fast_preprocess: bool = False,
        batch_size: int = 32,
        text_batch_size: int = 128,
        threads: int = 0,
    ) -> None:
        try:
            import onnxruntime  # noqa: F401
            from tokenizers import Tokenizer
        except ImportError as e:
            raise BackendUnavailable(f"the onnx backend needs onnxruntime and tokenizers: {e}") from e
        if quantize not in (None, "int8"):
            raise ValueError(f"unsupported quantize={quantize!r}: expected None or 'int8'")
        if batch_size < 1 or text_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        self.export_dir = Path(export_dir)
        meta = json.loads((self.export_dir / "meta.json").read_text(encoding="utf-8"))
        if meta.get("exporter_version") != EXPORTER_VERSION:
            raise ValueError(f"{self.export_dir} was exported by exporter version {meta.get('exporter_version')}, "
                             f"this mmrag reads {EXPORTER_VERSION}; delete it to re-export")
        self.meta = meta
        self.providers = _providers(device)
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        if quantize == "int8" and self.device != "cpu":
            raise ValueError("quantize='int8' runs on CPU only; use device='cpu' or drop quantize")
        self.quantize = quantize
        self.threads = int(threads)
        self.batch_size = batch_size
        # Ingest still hands over `batch_size` images at a time; the CPU runs them in cache-sized calls.
        self.images_per_call = (cpu_images_per_call(int(meta["vision_tokens"]), batch_size)
                                if self.providers == ["CPUExecutionProvider"] else batch_size)
        self.text_batch_size = text_batch_size
        self.max_text_length = int(meta["max_text_length"])
        self._text_inputs: list[str] = list(meta["text_inputs"])

        tokenizer = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_text_length)
        tokenizer.enable_padding(pad_id=int(meta["pad_id"]), pad_token=str(meta["pad_token"]))
        self.tokenizer = tokenizer
        # an unpadded twin for sorting long lists by length (padding state is per instance)
        self._length_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._length_tokenizer.no_padding()
        t = json.loads((self.export_dir / "transform.json").read_text(encoding="utf-8"))
        self.transform = ClipTransform(
            shortest_edge=t["shortest_edge"],
            size=tuple(t["size"]) if t["size"] else None,
            resample=int(t["resample"]),
            crop=tuple(t["crop"]) if t["crop"] else None,
            table=np.asarray(t["table"], dtype=np.float32),
        )
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

        image_size = int(meta["image_size"])
        extra: dict[str, Any] = {
            "preprocess": "fast" if fast_preprocess else "exact",
            "max_text_length": self.max_text_length,
            "dtype": "int8" if quantize else "float32",
            "runtime": "onnx",
        }
        if fast_preprocess:
            extra["draft_size"] = image_size
        backend = str(meta["backend"])
        self.info = ModelInfo(
            model_id=model_id,
            dim=int(meta["dim"]),
            backend=backend,
            image_size=image_size,
            language="zh" if backend == "hf-chinese-clip" else "en",
            quantization=ORT_INT8 if quantize else None,
            extra=extra,
            runtime="onnx",
        )

    # Sessions load on first use: a text query never pays for the vision tower.
    def session(self, tower: str) -> Any:
        with self._lock:
            if tower not in self._sessions:
                import onnxruntime as ort

                path = quantized_path(self.export_dir, tower) if self.quantize else self.export_dir / f"{tower}.onnx"
                opts = ort.SessionOptions()
                if self.threads > 0:
                    opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self._sessions[tower] = ort.InferenceSession(str(path), opts, providers=self.providers)
            return self._sessions[tower]

    @property
    def logit_scale(self) -> float:
        return float(self.meta["logit_scale"])

    @property
    def draft_size(self) -> int | None:
        return self.info.extra.get("draft_size")

    @property
    def portable_preprocess(self) -> ClipTransform:
        return self.transform

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = pixel_batch(pixels)
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        sess = self.session(_VISION)
        step = self.images_per_call
        out = [
            sess.run(None, {"pixel_values": np.ascontiguousarray(pixels[i : i + step])})[0]
            for i in range(0, len(pixels), step)
        ]
        return _l2_normalize(np.concatenate(out, axis=0))

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """One batch as int64 arrays: padded to its longest text, truncated to the model limit."""
        encs = self.tokenizer.encode_batch(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
        }
        if "token_type_ids" in self._text_inputs:
            arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
        return {k: arrays[k] for k in self._text_inputs}

    def _token_lengths(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._length_tokenizer.encode_batch(texts)]

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        return _l2_normalize(self.session(_TEXT).run(None, self.tokenize(texts))[0])

    def __repr__(self) -> str:
        q = ", int8" if self.quantize else ""
        return f"OnnxClipEmbedder({self.info.model_id!r}, device={self.device!r}, dim={self.info.dim}{q})"
