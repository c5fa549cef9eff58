"""Rules that exist once: a second path that drifts from the first fails here."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mmrag.embedders.backends import CHINESE_CLIP_TEXT_LENGTH, CLIP_TEXT_LENGTH, language_of, text_length_of
from mmrag.embedders.registry import MODELS
from mmrag.tasks import evaluate, metrics
from mmrag.training import finetune


def test_recall_is_the_same_in_evaluation_and_fine_tuning() -> None:
    rng = np.random.default_rng(3)
    sim = rng.standard_normal((12, 12)).astype(np.float32)
    sim[:, 5] = sim[:, 4]  # ties: both implementations must break them the same way
    groups = [0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9]  # duplicate captions share a group
    mask = metrics.group_mask(groups, groups)
    ours = finetune.recall_at_k(torch.from_numpy(sim), groups, groups, ks=(1, 2, 5))
    assert ours == {k: evaluate.recall_at_k(sim, mask, k) for k in (1, 2, 5)}
    assert evaluate.recall_at_k is metrics.recall_at_k and evaluate.ranks is metrics.ranks


def test_text_limits_and_languages_come_from_one_place() -> None:
    from mmrag.embedders import cnclip, tokenizers
    from mmrag.training import scratch

    assert (CLIP_TEXT_LENGTH, CHINESE_CLIP_TEXT_LENGTH) == (77, 52)
    assert (text_length_of("hf-clip"), text_length_of("hf-chinese-clip"), text_length_of("cn_clip")) == (77, 52, 52)
    assert scratch.CLIP_TEXT_MAX_LENGTH == CLIP_TEXT_LENGTH and scratch.CHINESE_TEXT_MAX_LENGTH == CHINESE_CLIP_TEXT_LENGTH
    assert cnclip.CN_CLIP_TEXT_LENGTH == CHINESE_CLIP_TEXT_LENGTH
    assert tokenizers.write_clip_tokenizer.__kwdefaults__["model_max_length"] == CLIP_TEXT_LENGTH
    assert tokenizers.write_chinese_tokenizer.__kwdefaults__["model_max_length"] == CHINESE_CLIP_TEXT_LENGTH
    for spec in MODELS.values():  # every registered model's language follows its backend
        assert spec.language == language_of(spec.backend), spec.name


def test_tiny_test_models_and_scratch_models_share_one_builder(tmp_path) -> None:
    from mmrag.embedders import load_embedder
    from mmrag.testing.tiny_models import make_tiny_chinese_clip, make_tiny_clip

    en = load_embedder(str(make_tiny_clip(tmp_path / "en")), device="cpu")
    zh = load_embedder(str(make_tiny_chinese_clip(tmp_path / "zh", keep="猫狗红")), device="cpu")
    assert (en.info.language, en.max_text_length) == ("en", 77)
    assert (zh.info.language, zh.max_text_length) == ("zh", 52)


def test_plots_without_matplotlib_say_which_extra_to_install(monkeypatch) -> None:
    from mmrag.errors import UsageError
    from mmrag.tasks import plots

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'mmrag\[plot\]'"):
        plots._figure(1.0, 1.0, 72)
