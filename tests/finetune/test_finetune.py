from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmrag.training import finetune as ft
from mmrag.training.finetune import FinetuneConfig, finetune
from mmrag.training.scratch import build_scratch_model
from mmrag.training.synthetic import generate, write_corpus

torch.set_num_threads(1)


# --------------------------------------------------------------------------- objective


def test_contrastive_loss_matches_a_hand_computation():
    logits = [[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.2, 0.4, 0.9]]

    def ce(rows):  # mean over rows of -log softmax(row)[i]
        return sum(-(r[i] - math.log(sum(math.exp(v) for v in r))) for i, r in enumerate(rows)) / len(rows)

    columns = [list(c) for c in zip(*logits)]
    expected = (ce(logits) + ce(columns)) / 2
    got = ft.contrastive_loss(torch.tensor(logits, dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # asymmetric matrix: the two directions really differ, so both are needed
    assert ce(logits) != pytest.approx(ce(columns))


def test_clip_logits_are_scaled_cosine_similarities():
    img = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    txt = torch.tensor([[0.0, 2.0], [1.0, 1.0], [-5.0, 0.0]])
    scale = torch.tensor(math.log(10.0))
    logits = ft.clip_logits(img, txt, scale)
    expected = 10 * torch.tensor([[0.8, 7 / 5 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]])
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[:, :2], expected)
    torch.testing.assert_close(logits[:, 2], torch.tensor([-6.0, -10.0]))


def test_logit_scale_clamp_keeps_exp_within_1_and_100():
    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor(7.5))
    ft.clamp_logit_scale(model)
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(100.0))
    model.logit_scale.data.fill_(-0.3)
    ft.clamp_logit_scale(model)
    assert float(model.logit_scale.detach()) == 0.0
    model.logit_scale.data.fill_(2.0)
    ft.clamp_logit_scale(model)
    assert float(model.logit_scale.detach()) == 2.0


def test_recall_counts_any_item_of_the_same_group_as_a_hit():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.6], [0.5, 0.4, 0.3]])
    # query 0 (group 0): top-1 is item 0 (group 0) -> hit; query 1 (group 1): top-1 item 0
    # (group 0) -> miss, item 1 only at rank 3; query 2 (group 0): top-1 item 0 -> hit (duplicate)
    r = ft.recall_at_k(sim, [0, 1, 0], [0, 1, 2], ks=(1, 2, 3))
    assert r == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


def test_lr_schedule_warmup_then_cosine():
    f = lambda s: ft.lr_lambda(s, warmup=4, total=14, min_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(14) == pytest.approx(0.1)


# --------------------------------------------------------------------------- data


def test_normaliser_reproduces_the_processor_output(tmp_path):
    from transformers import AutoProcessor

    d = build_scratch_model(tmp_path / "m", size="tiny")
    proc = AutoProcessor.from_pretrained(d).image_processor
    images = [s.image for s in generate(4, seed=0)]
    reference = torch.as_tensor(proc(images, return_tensors="pt")["pixel_values"])
    ours = ft.PixelNormalizer(proc, torch.device("cpu"))(ft.pixels_uint8(proc, images))
    assert ours.shape == reference.shape == (4, 3, 64, 64)
    torch.testing.assert_close(ours, reference, atol=2e-3, rtol=0)


def test_tensorize_skips_unreadable_images_and_keeps_the_rest_aligned(tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(build_scratch_model(tmp_path / "m", size="tiny")).image_processor
    images = [s.image for s in generate(2, seed=1)]
    images[0].save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    images[1].save(tmp_path / "c.png")
    paths = [tmp_path / "a.png", tmp_path / "bad.jpg", tmp_path / "missing.png", tmp_path / "c.png"]
    pixels, kept, skipped = ft.tensorize_images(proc, paths, workers=2, chunk=3)
    assert kept == [0, 3]
    assert [(s.rel_path, s.reason.split(":")[0]) for s in skipped] == [
        (str(tmp_path / "bad.jpg"), "truncated or corrupt image"), (str(tmp_path / "missing.png"), "file not found"),
    ]
    torch.testing.assert_close(pixels, ft.pixels_uint8(proc, [Image.open(tmp_path / "a.png").convert("RGB"),
                                                               Image.open(tmp_path / "c.png").convert("RGB")]))
    with pytest.raises(ValueError, match="none of the images could be read"):
        ft.tensorize_images(proc, [tmp_path / "bad.jpg"])


def test_read_pairs_resolves_relative_paths_and_drops_uncaptioned(tmp_path):
    rows = [{"path": "a.png", "caption": "x"}, {"path": "/abs/b.png", "caption": ""}, {"path": "c.png", "caption": "z"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text("path,caption\na.png,x\n/abs/b.png,\nc.png,z\n", encoding="utf-8")
    for name in ("m.parquet", "m.csv"):
        assert ft.read_pairs(tmp_path / name) == [(tmp_path / "a.png", "x"), (tmp_path / "c.png", "z")]
    with pytest.raises(ValueError, match="unsupported manifest format"):
        ft.read_pairs(tmp_path / "m.txt")


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = write_corpus(tmp_path_factory.mktemp("corpus"), 64, seed=1, sidecars=False, manifest="jsonl")
    return out / "manifest.jsonl"


def _config(corpus: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(
        manifest=corpus, out_dir=out, from_scratch="tiny", epochs=2, batch_size=16, lr=3e-3, val_fraction=0.25,
        seed=0, device="cpu", num_workers=1, warmup_steps=1,
    )  # fmt: skip
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return finetune(_config(corpus, out), progress=False)


def _weights(model_or_dir) -> dict[str, torch.Tensor]:
    if isinstance(model_or_dir, (str, Path)):
        from transformers import AutoModel

        model_or_dir = AutoModel.from_pretrained(model_or_dir)
    return {k: v.detach().clone() for k, v in model_or_dir.state_dict().items()}


def _checkpoint_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / ft.CHECKPOINT_DIR / "trainer_state.pt", weights_only=False)["model"]


def test_tiny_run_learns_and_writes_a_loadable_model(full_run):
    from transformers import AutoModel, AutoProcessor, CLIPModel

    result = full_run
    # 64 pairs, 16 held out -> 48 train -> 3 steps of 16 per epoch
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    assert [m["step"] for m in result.metrics] == [3, 6] and result.global_step == 6
    assert result.metrics[1]["train_loss"] < result.metrics[0]["train_loss"]
    for m in result.metrics:
        assert set(m) >= {"train_loss", "val_loss", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "mean_recall", "logit_scale"}
        assert 0.0 <= m["t2i_r1"] <= m["t2i_r5"] <= 1.0
        assert m["mean_recall"] == pytest.approx((m["i2t_r1"] + m["i2t_r5"] + m["t2i_r1"] + m["t2i_r5"]) / 4)
    best = max(result.metrics, key=lambda m: m["mean_recall"])
    assert result.best_epoch == best["epoch"] and result.best_metric == pytest.approx(best["mean_recall"])
    assert result.pairs_per_second > 0 and not result.stopped_early
    saved = json.loads((result.out_dir / "metrics.json").read_text())
    assert saved["best_epoch"] == result.best_epoch and len(saved["epochs"]) == 2
    model = AutoModel.from_pretrained(result.out_dir)
    assert isinstance(model, CLIPModel)
    processor = AutoProcessor.from_pretrained(result.out_dir)
    assert processor.tokenizer("a red circle")["input_ids"][0] == processor.tokenizer.bos_token_id
    if result.best_epoch == 2:  # the saved model is the last epoch's weights
        ckpt = _checkpoint_weights(result.out_dir)
        assert all(torch.equal(v, ckpt[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("stop_at", [3, 4])  # end of epoch 1; one step into epoch 2
def test_resume_after_interruption_matches_an_uninterrupted_run(corpus, tmp_path, full_run, stop_at):
    config = _config(corpus, tmp_path / "resumed")
    first = finetune(replace(config, max_steps=stop_at), progress=False)
    assert first.stopped_early and first.global_step == stop_at
    assert len(first.metrics) == 1  # epoch 1 always finished before stopping
    state = json.loads((tmp_path / "resumed" / ft.CHECKPOINT_DIR / "trainer_state.json").read_text())
    assert (state["epoch"], state["micro_step"], state["global_step"]) == (1, stop_at - 3, stop_at)

    second = finetune(replace(config, resume=True), progress=False)
    assert second.global_step == 6 and not second.stopped_early
    ignore = {"pairs_per_second"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ignore} for m in ms]  # noqa: E731
    assert strip(second.metrics) == strip(full_run.metrics)
    assert second.best_epoch == full_run.best_epoch
    a, b = _checkpoint_weights(full_run.out_dir), _checkpoint_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_projections_only_leaves_the_towers_bit_identical(corpus, tmp_path):
    init = _weights(build_scratch_model(tmp_path / "init", size="tiny", seed=0))
    result = finetune(_config(corpus, tmp_path / "proj", epochs=1, train="projections", val_fraction=0), progress=False)
    after = _checkpoint_weights(result.out_dir)
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    assert changed == {"visual_projection.weight", "text_projection.weight", "logit_scale"}


def test_last_n_trains_only_the_top_layers_norms_and_projections(corpus, tmp_path):
    init = _weights(build_scratch_model(tmp_path / "init", size="tiny", seed=0))
    result = finetune(_config(corpus, tmp_path / "last", epochs=1, train="last:1", val_fraction=0), progress=False)
    after = _checkpoint_weights(result.out_dir)
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    allowed = ("vision_model.encoder.layers.1.", "text_model.encoder.layers.1.", "vision_model.post_layernorm.",
               "text_model.final_layer_norm.", "visual_projection.", "text_projection.", "logit_scale")  # fmt: skip
    assert changed and all(k.startswith(allowed) for k in changed)
    assert any(k.startswith("vision_model.encoder.layers.1.") for k in changed)
    assert any(k.startswith("text_model.encoder.layers.1.") for k in changed)


def test_chinese_clip_from_scratch_and_bad_arguments(corpus, tmp_path):
    from transformers import AutoModel, ChineseCLIPModel

    zh = corpus.parent / "zh.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    zh.write_text("".join(json.dumps({"path": r["path"], "caption": r["caption_zh"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = finetune(_config(zh, tmp_path / "zh", epochs=1, arch="chinese-clip", train="last:1"), progress=False)
    assert isinstance(AutoModel.from_pretrained(result.out_dir), ChineseCLIPModel)
    assert len(result.metrics) == 1
    with pytest.raises(ValueError, match="train must be"):
        finetune(_config(corpus, tmp_path / "bad", train="everything"), progress=False)
    with pytest.raises(ValueError, match="exactly one of"):
        finetune(_config(corpus, tmp_path / "bad2", base=str(tmp_path)), progress=False)


def test_lora_without_peft_says_what_to_install(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail as if absent
    with pytest.raises(ImportError, match=r"needs the `peft` package"):
        finetune(_config(corpus, tmp_path / "lora", lora_rank=4), progress=False)


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_lora_run_saves_a_merged_plain_model(corpus, tmp_path):
    from transformers import AutoModel

    init = _weights(build_scratch_model(tmp_path / "init", size="tiny", seed=0))
    result = finetune(_config(corpus, tmp_path / "lora", epochs=1, lora_rank=4, val_fraction=0), progress=False)
    merged = _weights(AutoModel.from_pretrained(result.out_dir))
    assert merged.keys() == init.keys()  # no lora_ leftovers
    changed = {k for k in init if not torch.equal(init[k], merged[k])}
    assert "visual_projection.weight" in changed
    assert any(".q_proj.weight" in k for k in changed)
    assert not any("mlp" in k or "layer_norm" in k for k in changed)
