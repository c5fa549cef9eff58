"""Friendly model names, name resolution, and the one loading entry point.

Accepted names (see `resolve_model`):
  * a registry name, e.g. "clip-vit-b32" (see `list_models()`),
  * "hf-hub:ORG/NAME" or a bare "ORG/NAME" (Hugging Face hub id),
  * "local-dir:/path" or a bare path to an existing directory (a saved checkpoint),
  * "cn_clip:ViT-B-16" (the `cn_clip` package backend).

Bundled reference models ("mmrag-shapes-en", "mmrag-shapes-zh": small CLIPs trained on
mmrag's synthetic shapes, shipped in `mmrag/assets/reference/`) keep their registry
name as model id, so a collection does not depend on where mmrag is installed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmrag.embedders.backends import Backend, backend_from_config, language_of
from mmrag.embedders.base import Embedder

Location = Literal["hub", "local", "cn_clip", "bundled"]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CN_CLIP_PREFIX = "cn_clip:"

DEFAULT_MODEL = "clip-vit-b32"

# Names the cn_clip package can load (its own checkpoint zoo).
CN_CLIP_MODELS = ("ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "RN50")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and which adapter loads it."""

    name: str  # the registry name, or the string the user gave
    backend: Backend
    source: str  # what the backend loads: HF id, absolute directory, or cn_clip model name
    language: str = "en"
    location: Location = "hub"

    @property
    def model_id(self) -> str:
        """Canonical id recorded in collections."""
        if self.location == "local":
            return LOCAL_DIR_PREFIX + self.source
        if self.location == "cn_clip":
            return CN_CLIP_PREFIX + self.source
        if self.location == "bundled":
            return self.name
        return self.source

    @property
    def load_path(self) -> str:
        """What from_pretrained receives: a hub id or a directory."""
        if self.location == "bundled":
            return str(REFERENCE_DIR / self.source)
        return self.source


REFERENCE_DIR = Path(__file__).resolve().parent.parent / "assets" / "reference"


def _hub(name: str, repo_id: str, backend: Backend) -> ModelSpec:
    return ModelSpec(name, backend, repo_id, language_of(backend), "hub")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _hub("clip-vit-b32", "openai/clip-vit-base-patch32", "hf-clip"),
        _hub("clip-vit-b16", "openai/clip-vit-base-patch16", "hf-clip"),
        _hub("clip-vit-l14", "openai/clip-vit-large-patch14", "hf-clip"),
        _hub("clip-vit-l14-336", "openai/clip-vit-large-patch14-336", "hf-clip"),
        _hub("chinese-clip-vit-b16", "OFA-Sys/chinese-clip-vit-base-patch16", "hf-chinese-clip"),
        _hub("chinese-clip-vit-l14", "OFA-Sys/chinese-clip-vit-large-patch14", "hf-chinese-clip"),
        _hub("chinese-clip-vit-l14-336", "OFA-Sys/chinese-clip-vit-large-patch14-336px", "hf-chinese-clip"),
        _hub("chinese-clip-vit-h14", "OFA-Sys/chinese-clip-vit-huge-patch14", "hf-chinese-clip"),
        # RN50 has no transformers port: only the cn_clip package can run it.
        ModelSpec("chinese-clip-rn50", "cn_clip", "RN50", "zh", "cn_clip"),
        # Trained by pipelines/train_reference.py; see README "Reference models".
        ModelSpec("mmrag-shapes-en", "hf-clip", "clip-shapes-en", "en", "bundled"),
        ModelSpec("mmrag-shapes-zh", "hf-chinese-clip", "chinese-clip-shapes-zh", "zh", "bundled"),
    )
}


def list_models() -> list[str]:
    """Registered friendly names, default first."""
    return [DEFAULT_MODEL] + sorted(n for n in MODELS if n != DEFAULT_MODEL)


def _local_spec(given: str, path: str) -> ModelSpec:
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise ValueError(f"model {given!r}: directory {directory} does not exist")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ValueError(f"model {given!r}: {directory} has no config.json (not a saved transformers model)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    backend = backend_from_config(config, str(config_file))
    return ModelSpec(given, backend, str(directory), language_of(backend), "local")


def _cached_hub_config(repo_id: str) -> dict | None:
    """config.json of a hub model if it is already in the local HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed ids etc.: fall back to the name
        return None
    if isinstance(cached, str) and os.path.isfile(cached):
        with open(cached, encoding="utf-8") as fh:
            return json.load(fh)
    return None


def _hub_spec(given: str, repo_id: str) -> ModelSpec:
    if not _HUB_ID.match(repo_id):
        raise ValueError(f"model {given!r}: {repo_id!r} is not a hub id of the form ORG/NAME")
    for spec in MODELS.values():  # a registered model given by its hub id keeps its metadata
        if spec.location == "hub" and spec.source == repo_id:
            return ModelSpec(given, spec.backend, repo_id, spec.language, "hub")
    config = _cached_hub_config(repo_id)
    if config is not None:
        backend = backend_from_config(config, f"cached config of {repo_id}")
    else:
        lowered = repo_id.lower()
        backend = "hf-chinese-clip" if ("chinese-clip" in lowered or "chinese_clip" in lowered) else "hf-clip"
    return ModelSpec(given, backend, repo_id, language_of(backend), "hub")


def resolve_model(name: str) -> ModelSpec:
    """Turn any accepted model name into a `ModelSpec` (see the module docstring).

    Raises ValueError for unknown names, listing the registered ones.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"empty model name; registered models: {', '.join(list_models())}")
    name = name.strip()
    if name in MODELS:
        return MODELS[name]
    if name.startswith(HF_HUB_PREFIX):
        return _hub_spec(name, name[len(HF_HUB_PREFIX):])
    if name.startswith(LOCAL_DIR_PREFIX):
        return _local_spec(name, name[len(LOCAL_DIR_PREFIX):])
    if name.startswith(CN_CLIP_PREFIX):
        model = name[len(CN_CLIP_PREFIX):]
        if model not in CN_CLIP_MODELS:
            raise ValueError(f"unknown cn_clip model {model!r}; cn_clip provides: {', '.join(CN_CLIP_MODELS)}")
        return ModelSpec(name, "cn_clip", model, "zh", "cn_clip")
    if os.path.isdir(os.path.expanduser(name)):
        return _local_spec(name, name)
    if _HUB_ID.match(name):
        return _hub_spec(name, name)
    raise ValueError(
        f"unknown model {name!r}: not a registered name, an existing directory, a hub id (ORG/NAME), "
        f"'hf-hub:ORG/NAME', 'local-dir:/path' or 'cn_clip:NAME'. "
        f"Registered models: {', '.join(list_models())}"
    )


RUNTIMES = ("auto", "torch", "onnx")
# Where exports of bundled and hub models go when the caller names no cache (App passes
# MMRAG_HOME/cache/onnx).
DEFAULT_ONNX_CACHE = Path.home() / ".cache" / "mmrag" / "onnx"


def _accelerator_present() -> bool:
    """A GPU torch could use, guessed without importing torch (which costs seconds)."""
    import platform
    import sys

    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"):
        return True
    return sys.platform == "darwin" and platform.machine() == "arm64"  # MPS


def _onnxruntime_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(runtime: str, spec: ModelSpec, *, device: str = "auto", quantize: str | None = None) -> str:
    """"torch" or "onnx" for this model, device and quantization.

    auto picks ONNX Runtime on CPU (measured faster: README "ONNX Runtime backend") and torch
    on a GPU, where torch runs fp16 with a tuned batch. int8 always runs through ONNX Runtime.
    """
    runtime = (runtime or "auto").strip().lower()
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown backend {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if spec.backend == "cn_clip":
        if runtime == "onnx" or quantize:
            raise ValueError("the cn_clip package backend runs on torch only (no onnx backend, no int8)")
        return "torch"
    if runtime == "torch" and quantize == "int8":
        raise ValueError("quantize='int8' runs through ONNX Runtime's quantization; use backend 'onnx' or 'auto'")
    if runtime != "auto":
        return runtime
    if not _onnxruntime_present():
        return "torch"
    if quantize == "int8":
        return "onnx"
    pref = (device or "auto").strip().lower()
    if pref == "cpu" or (pref == "auto" and not _accelerator_present()):
        return "onnx"
    return "torch"
def _offline_fix(spec: ModelSpec) -> str:
    return (
        f"Fix: pass a local directory saved with save_pretrained (--model /path/to/model), set "
        f"HF_HUB_OFFLINE=1 with {spec.source} already in the Hugging Face cache, or use "
        f"--model mmrag-shapes-en to try mmrag without a download (it only knows synthetic shapes)."
    )


def ensure_hub_model_reachable(spec: ModelSpec, *, timeout: float = 3.0) -> None:
    """Fail in seconds, with the fix, when a hub model is neither cached nor downloadable.

    Without this the hub client retries for about a minute and ends with a raw OSError.
    A cached model (its config.json in the HF cache) is left to from_pretrained.
    """
    from huggingface_hub import constants

    from mmrag.errors import RunFailed
    from mmrag.net import tcp_connect

    if _cached_hub_config(spec.source) is not None:
        return
    if constants.HF_HUB_OFFLINE:
        raise RunFailed(
            f"model {spec.model_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, "
            f"so it cannot be downloaded. {_offline_fix(spec)}"
        )
    try:
        tcp_connect(constants.ENDPOINT, default_port=80, default_host="huggingface.co", timeout=timeout)
    except OSError as exc:
        raise RunFailed(
            f"cannot download model {spec.model_id!r}: {constants.ENDPOINT} is unreachable "
            f"({exc.strerror or exc}). {_offline_fix(spec)}"
        ) from exc


def load_embedder(
    name: str | ModelSpec,
    *,
    device: str = "auto",
    quantize: str | None = None,
    fast_preprocess: bool = False,
    batch_size: int = 32,
    text_batch_size: int = 128,
    backend: str = "auto",
    threads: int = 0,
    onnx_cache: str | Path | None = None,
) -> Embedder:
    """Resolve `name` and build the matching embedder. The one entry point to use.

    `backend`: "torch", "onnx" or "auto" (see `resolve_runtime`). `threads`: model CPU
    threads for ONNX Runtime (0 = its default; torch threads are the caller's, see App).
    `onnx_cache`: where exports go that cannot sit beside the model (bundled, hub, read-only).
    """
    spec = name if isinstance(name, ModelSpec) else resolve_model(name)
    if quantize not in (None, "int8"):
        raise ValueError(f"unsupported quantize={quantize!r}: expected None or 'int8'")
    if spec.location == "bundled" and not Path(spec.load_path, "config.json").is_file():
        raise ValueError(f"bundled model {spec.name!r} is missing from {spec.load_path}; "
                         "re-create it with `python pipelines/train_reference.py`")
    if spec.location == "hub":
        ensure_hub_model_reachable(spec)  # both runtimes load (or export from) the hub's files
    if resolve_runtime(backend, spec, device=device, quantize=quantize) == "onnx":
        from mmrag.embedders.onnx import OnnxClipEmbedder, ensure_export

        export_dir = ensure_export(
            spec.load_path,
            backend=spec.backend,
            cache_dir=Path(onnx_cache) if onnx_cache is not None else DEFAULT_ONNX_CACHE,
            beside_model=spec.location == "local",  # never write into the package or the HF cache
        )
        return OnnxClipEmbedder(
            export_dir,
            model_id=spec.model_id,
            device=device,
            quantize=quantize,
            fast_preprocess=fast_preprocess,
            batch_size=batch_size,
            text_batch_size=text_batch_size,
            threads=threads,
        )
    if spec.backend == "cn_clip":
        from mmrag.embedders.cnclip import CnClipEmbedder

        return CnClipEmbedder(
            spec.source,
            device=device,
            quantize=quantize,
            fast_preprocess=fast_preprocess,
            batch_size=batch_size,
            text_batch_size=text_batch_size,
        )
    from mmrag.embedders.hf import HFClipEmbedder

    return HFClipEmbedder(
        spec.load_path,
        model_id=spec.model_id,
        backend=spec.backend,
        device=device,
        quantize=quantize,
        fast_preprocess=fast_preprocess,
        batch_size=batch_size,
        text_batch_size=text_batch_size,
    )
