"""Model name resolution, the registry, device choice, and the cn_clip backend error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mmrag.embedders import (
    DEFAULT_MODEL,
    MODELS,
    BackendUnavailable,
    ModelSpec,
    list_models,
    load_embedder,
    resolve_model,
)
from mmrag.embedders.device import pick_device


def test_registry_contents() -> None:
    names = list_models()
    assert names[0] == DEFAULT_MODEL == "clip-vit-b32"
    assert sorted(names) == sorted(MODELS)
    assert resolve_model("clip-vit-b32") == ModelSpec(
        "clip-vit-b32", "hf-clip", "openai/clip-vit-base-patch32", "en", "hub"
    )
    assert resolve_model("clip-vit-l14-336").source == "openai/clip-vit-large-patch14-336"
    zh = resolve_model("chinese-clip-vit-b16")
    assert (zh.backend, zh.source, zh.language, zh.model_id) == (
        "hf-chinese-clip", "OFA-Sys/chinese-clip-vit-base-patch16", "zh", "OFA-Sys/chinese-clip-vit-base-patch16"
    )
    rn50 = resolve_model("chinese-clip-rn50")
    assert (rn50.backend, rn50.model_id) == ("cn_clip", "cn_clip:RN50")
    for name in names:
        spec = resolve_model(name)
        assert spec.backend in ("hf-clip", "hf-chinese-clip", "cn_clip")
        assert spec.language == ("en" if spec.backend == "hf-clip" else "zh")


def test_hub_ids() -> None:
    spec = resolve_model("hf-hub:openai/clip-vit-base-patch16")
    assert (spec.backend, spec.source, spec.model_id, spec.location) == (
        "hf-clip", "openai/clip-vit-base-patch16", "openai/clip-vit-base-patch16", "hub"
    )
    bare = resolve_model("someorg/chinese-clip-finetuned")
    assert (bare.backend, bare.language, bare.model_id) == ("hf-chinese-clip", "zh", "someorg/chinese-clip-finetuned")
    assert resolve_model("someorg/my_clip").backend == "hf-clip"
    with pytest.raises(ValueError, match="not a hub id"):
        resolve_model("hf-hub:no-slash")


def test_local_dirs(tiny_clip_dir: Path, tiny_chinese_clip_dir: Path, monkeypatch) -> None:
    for directory, backend, language in (
        (tiny_clip_dir, "hf-clip", "en"),
        (tiny_chinese_clip_dir, "hf-chinese-clip", "zh"),
    ):
        absolute = str(directory.resolve())
        for name in (str(directory), "local-dir:" + str(directory)):
            spec = resolve_model(name)
            assert (spec.backend, spec.source, spec.language, spec.location) == (backend, absolute, language, "local")
            assert spec.model_id == "local-dir:" + absolute
    # a relative directory is made absolute
    monkeypatch.chdir(tiny_clip_dir.parent)
    assert resolve_model(tiny_clip_dir.name).model_id == "local-dir:" + str(tiny_clip_dir.resolve())
    assert resolve_model("./" + tiny_clip_dir.name).source == str(tiny_clip_dir.resolve())


def test_local_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'bert'.*'chinese_clip', 'clip'"):
        resolve_model("local-dir:" + str(tmp_path))


def test_cn_clip_names() -> None:
    spec = resolve_model("cn_clip:ViT-B-16")
    assert (spec.backend, spec.source, spec.language, spec.model_id) == ("cn_clip", "ViT-B-16", "zh", "cn_clip:ViT-B-16")
    with pytest.raises(ValueError, match="unknown cn_clip model 'ViT-Z-1'; cn_clip provides: ViT-B-16, "):
        resolve_model("cn_clip:ViT-Z-1")


@pytest.mark.parametrize("name", ["clip-vit-b99", "not a model", "", "a/b/c"])
def test_unknown_names_list_registered_models(name: str) -> None:
    with pytest.raises(ValueError) as err:
        resolve_model(name)
    message = str(err.value)
    assert "Registered models: clip-vit-b32, " in message or "registered models: clip-vit-b32, " in message
    for registered in MODELS:
        assert registered in message


def test_load_embedder_rejects_unknown_quantization(tiny_clip_dir: Path) -> None:
    with pytest.raises(ValueError, match="unsupported quantize='fp4'"):
        load_embedder(str(tiny_clip_dir), quantize="fp4")


def test_pick_device() -> None:
    expected_auto = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device("auto") == expected_auto
    assert pick_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda:0")


def _cn_clip_importable() -> bool:
    try:
        import cn_clip.clip  # noqa: F401
    except Exception:
        return False
    return True


def _assert_cn_clip_message(message: str) -> None:
    assert message.startswith("the cn_clip backend is unavailable: importing cn_clip failed with ")
    assert "needs torchvision" in message
    assert "Recommended alternative: the transformers Chinese-CLIP models, e.g. 'chinese-clip-vit-b16'" in message


def test_cn_clip_backend_unavailable_for_real() -> None:
    if _cn_clip_importable():
        pytest.skip("cn_clip imports here; the failure path cannot be observed for real")
    for name in ("cn_clip:ViT-B-16", "chinese-clip-rn50"):
        with pytest.raises(BackendUnavailable) as err:
            load_embedder(name, device="cpu")
        _assert_cn_clip_message(str(err.value))
        assert isinstance(err.value.__cause__, Exception)  # the original failure is chained
        assert type(err.value.__cause__).__name__ in str(err.value)


def test_cn_clip_backend_unavailable_when_package_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cn_clip", None)  # makes `import cn_clip` raise ImportError
    with pytest.raises(BackendUnavailable) as err:
        load_embedder("cn_clip:ViT-L-14", device="cpu")
    _assert_cn_clip_message(str(err.value))
    assert "failed with ModuleNotFoundError" in str(err.value) or "failed with ImportError" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_hub_backend_from_cached_config(monkeypatch) -> None:
    import mmrag.embedders.registry as registry

    configs = {"org/plain-name": {"model_type": "chinese_clip"}, "org/other": {"model_type": "siglip"}}
    monkeypatch.setattr(registry, "_cached_hub_config", lambda repo_id: configs.get(repo_id))
    spec = resolve_model("org/plain-name")  # the cached config beats the name heuristic
    assert (spec.backend, spec.language) == ("hf-chinese-clip", "zh")
    with pytest.raises(ValueError, match="cached config of org/other: unsupported model_type 'siglip'"):
        resolve_model("hf-hub:org/other")
    assert resolve_model("org/not-cached").backend == "hf-clip"
