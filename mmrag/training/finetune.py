"""Contrastive (CLIP-objective) fine-tuning of CLIP / Chinese-CLIP models on image-caption pairs.

Objective, as in CLIP: logits = exp(t) * cos_sim(image_i, text_j) over the in-batch
N x N matrix, `t` the model's learned `logit_scale` (clamped after every step so that
exp(t) <= 100); loss = mean of the image->text and text->image cross-entropies.

The (small) dataset is decoded and resized once with the model's own image processor
into a uint8 tensor (a thread pool does the decoding); normalisation happens per
batch on the training device. Captions are tokenised once.

Output: `out_dir` is a plain `save_pretrained` directory of the best epoch's model
(by mean held-out recall) plus processor; `out_dir/checkpoint-last/` holds everything
needed to resume (model, optimizer, scheduler, grad scaler, position, RNG states).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from mmrag.corpus.manifest import read_pairs as read_manifest_pairs
from mmrag.corpus.types import SkippedFile
from mmrag.tasks.metrics import group_mask, ranks

log = logging.getLogger(__name__)

LOGIT_SCALE_MAX = math.log(100.0)
CHECKPOINT_DIR = "checkpoint-last"
_STATE_FILE = "trainer_state.pt"
_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "query", "key", "value"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class FinetuneConfig:
    """What to train, on what, and how.

    Exactly one of `base` (hub id or local dir, loaded with `from_pretrained`) and
    `from_scratch` (a `mmrag.training.scratch` size preset) is required.
    `train`: "all", "projections" (projection heads + logit scale), or "last:N"
    (last N transformer layers of both towers + final norms + projections + scale).
    `lora_rank` > 0 trains LoRA adapters (needs `peft`) plus the projections and scale,
    and saves the merged model. `max_steps` stops after that many optimizer steps in
    total (the checkpoint allows resuming later).
    """

    manifest: str | Path
    out_dir: str | Path
    base: str | Path | None = None
    from_scratch: Literal["tiny", "small", "base"] | None = None
    arch: Literal["clip", "chinese-clip"] = "clip"  # for from_scratch
    image_size: int = 64  # for from_scratch
    path_column: str = "path"
    caption_column: str = "caption"
    epochs: int = 1
    batch_size: int = 64
    lr: float = 5e-4
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None  # overrides warmup_ratio
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    train: str = "all"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    precision: Precision = "auto"  # auto: bf16 (fp16 if unsupported) on CUDA, fp32 on CPU
    save_every_steps: int | None = None
    max_steps: int | None = None
    resume: bool = False
    num_workers: int = 4  # decoding threads
    eval_batch_size: int = 512
    save_dtype: Literal["float32", "float16"] = "float32"


@dataclass
class FinetuneResult:
    best_epoch: int  # 1-based; 0 when no epoch finished
    metrics: list[dict[str, float]]  # one dict per finished epoch
    out_dir: Path
    pairs_per_second: float  # training pairs per second of training-loop time
    global_step: int = 0
    best_metric: float | None = None
    stopped_early: bool = False  # max_steps reached before the last epoch ended
    skipped: list[SkippedFile] = field(default_factory=list)  # images that could not be decoded


# --------------------------------------------------------------------------- objective


def clip_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """logits_per_image (N_img x N_txt) = exp(logit_scale) * cosine similarity."""
    image_embeds = F.normalize(image_embeds.float(), dim=-1)
    text_embeds = F.normalize(text_embeds.float(), dim=-1)
    return logit_scale.float().exp() * image_embeds @ text_embeds.t()


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Mean of image->text (rows) and text->image (columns) cross-entropies; pair i is (i, i)."""
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.t(), targets)) / 2


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """CLIP's clamp: keep exp(logit_scale) within [1, 100]."""
    scale = _core(model).logit_scale
    scale.clamp_(0.0, LOGIT_SCALE_MAX)


def recall_at_k(
    similarity: torch.Tensor | np.ndarray, query_groups: Sequence[int], gallery_groups: Sequence[int],
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Recall@k for each k, relevance by group id: `mmrag.tasks.metrics` (the one implementation)."""
    sim = similarity.detach().float().cpu().numpy() if isinstance(similarity, torch.Tensor) else np.asarray(similarity)
    mask = group_mask(query_groups, gallery_groups)
    rank = ranks(sim, mask)
    return {k: float(np.mean(rank <= k)) for k in ks}


# --------------------------------------------------------------------------- data


def read_pairs(manifest: str | Path, *, path_column: str = "path", caption_column: str = "caption") -> list[tuple[Path, str]]:
    """(absolute image path, caption) rows of a manifest: the corpus reader, with a clear error when empty."""
    pairs = read_manifest_pairs(Path(manifest), path_column=path_column, caption_column=caption_column)
    if not pairs:
        raise ValueError(f"manifest {manifest} holds no captioned rows (caption column {caption_column!r})")
    return pairs


def pixels_uint8(image_processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """Resize/crop with the model's processor but stop before rescale/normalise: uint8 NCHW."""
    out = image_processor(list(images), do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
    return out.float().round().clamp(0, 255).to(torch.uint8)


class PixelNormalizer:
    """The processor's rescale + normalise, applied on the training device."""

    def __init__(self, image_processor: Any, device: torch.device) -> None:
        self.factor = float(getattr(image_processor, "rescale_factor", 1 / 255))
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() * self.factor - self.mean) / self.std


def load_rgb_images(paths: Sequence[Path], *, workers: int = 4) -> list[Image.Image | SkippedFile]:
    """Each path decoded by ingestion's rule (`mmrag.corpus.decode`), or the SkippedFile saying why not."""
    from mmrag.corpus import ImageDecodeError, load_rgb

    def one(path: Path) -> Image.Image | SkippedFile:
        try:
            return load_rgb(path)
        except ImageDecodeError as exc:
            return SkippedFile(str(path), exc.reason)

    if workers <= 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def tensorize_images(
    image_processor: Any, paths: Sequence[Path], *, workers: int = 4, chunk: int = 256
) -> tuple[torch.Tensor, list[int], list[SkippedFile]]:
    """Decode + preprocess every image once: (uint8 (N, 3, H, W), kept indices, skipped files).

    A file that cannot be decoded is skipped and reported, never fatal: row i of the
    tensor is the image of `paths[kept[i]]`.
    """
    kept: list[int] = []
    skipped: list[SkippedFile] = []
    parts: list[torch.Tensor] = []
    for start in range(0, len(paths), chunk):
        images = []
        for i, result in enumerate(load_rgb_images(paths[start : start + chunk], workers=workers), start):
            if isinstance(result, SkippedFile):
                log.warning("skipping %s: %s", result.rel_path, result.reason)
                skipped.append(result)
            else:
                kept.append(i)
                images.append(result)
        if images:
            parts.append(pixels_uint8(image_processor, images))
    if not parts:
        raise ValueError("none of the images could be read: " + "; ".join(f"{s.rel_path}: {s.reason}" for s in skipped[:5]))
    return torch.cat(parts), kept, skipped


def tokenize(tokenizer: Any, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(
        list(captions), padding=True, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"]


def _trim(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # right padding: drop columns that are padding in every row of the batch
    length = int(attention_mask.sum(dim=1).max())
    return input_ids[:, :length], attention_mask[:, :length]


# --------------------------------------------------------------------------- model helpers


def _core(model: torch.nn.Module) -> torch.nn.Module:
    """The CLIP-family model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _layers(tower: torch.nn.Module) -> torch.nn.ModuleList:
    encoder = tower.encoder
    layers = getattr(encoder, "layers", None)
    if layers is None:
        layers = encoder.layer  # BERT-style text tower (Chinese-CLIP)
    return layers


def _final_norms(tower: torch.nn.Module) -> list[torch.nn.Module]:
    names = ("post_layernorm", "final_layer_norm")
    return [getattr(tower, n) for n in names if getattr(tower, n, None) is not None]


def select_trainable(model: torch.nn.Module, train: str) -> list[str]:
    """Set requires_grad per `train` ("all" | "projections" | "last:N"); returns trainable names."""
    core = _core(model)
    if train == "all":
        for p in core.parameters():
            p.requires_grad_(True)
    else:
        keep: list[torch.nn.Module] = [core.visual_projection, core.text_projection]
        if train.startswith("last:"):
            try:
                n = int(train.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"train must be 'all', 'projections' or 'last:N', got {train!r}") from None
            if n < 0:
                raise ValueError(f"train='last:N' needs N >= 0, got {n}")
            for tower in (core.vision_model, core.text_model):
                layers = _layers(tower)
                keep.extend(list(layers)[len(layers) - n :] if n else [])
                keep.extend(_final_norms(tower))
        elif train != "projections":
            raise ValueError(f"train must be 'all', 'projections' or 'last:N', got {train!r}")
        for p in core.parameters():
            p.requires_grad_(False)
        for module in keep:
            for p in module.parameters():
                p.requires_grad_(True)
        core.logit_scale.requires_grad_(True)
    return [n for n, p in core.named_parameters() if p.requires_grad]


def _apply_lora(model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    try:
        import peft
    except ImportError as exc:
        raise ImportError("lora_rank > 0 needs the `peft` package: pip install 'mmrag[lora]'") from exc
    lora_config = peft.LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_LORA_TARGETS,
        bias="none",
    )
    wrapped = peft.get_peft_model(model, lora_config)
    core = _core(wrapped)
    for module in (core.visual_projection, core.text_projection):
        for p in module.parameters():
            p.requires_grad_(True)
    core.logit_scale.requires_grad_(True)
    return wrapped


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, scalar/1-D parameters (class embedding) or logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("bias") or "norm" in name.lower() or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_lambda(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _load_model_and_processor(config: FinetuneConfig, out: Path) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModel, AutoProcessor

    logging.getLogger("transformers").setLevel(logging.ERROR)
    if (config.base is None) == (config.from_scratch is None):
        raise ValueError("set exactly one of FinetuneConfig.base and FinetuneConfig.from_scratch")
    source: str | Path
    if config.from_scratch is not None:
        from mmrag.training.scratch import build_scratch_model

        with tempfile.TemporaryDirectory(prefix="mmrag-scratch-") as tmp:
            source = build_scratch_model(
                tmp, size=config.from_scratch, arch=config.arch, image_size=config.image_size, seed=config.seed
            )
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
            processor = AutoProcessor.from_pretrained(source)
    else:
        source = config.base  # type: ignore[assignment]
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(source)
    if not hasattr(model, "logit_scale") or not hasattr(model, "visual_projection"):
        raise TypeError(f"{source} is not a CLIP-family dual encoder ({type(model).__name__})")
    return model, processor


def _save_pretrained(model: torch.nn.Module, processor: Any, out: Path, save_dtype: str) -> None:
    """Write a plain `from_pretrained` directory (LoRA merged) of the current weights."""
    to_save = copy.deepcopy(model).cpu()
    if hasattr(to_save, "merge_and_unload"):
        to_save = to_save.merge_and_unload()
    if save_dtype == "float16":
        to_save = to_save.to(torch.float16)
    to_save.save_pretrained(out)
    if save_dtype == "float16":
        # the weights are stored in fp16; loading without a dtype still gives fp32
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    processor.save_pretrained(out)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def encode(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    normalizer: PixelNormalizer,
    *,
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm float32 image and text embeddings (pixels: uint8 from `pixels_uint8`)."""
    core = _core(model)
    device = normalizer.mean.device
    was_training = model.training
    model.eval()
    images, texts = [], []
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        for s in range(0, pixels.shape[0], batch_size):
            batch = normalizer(pixels[s : s + batch_size].to(device, non_blocking=True))
            images.append(_features(core.get_image_features(pixel_values=batch)))
        for s in range(0, input_ids.shape[0], batch_size):
            ids, mask = _trim(input_ids[s : s + batch_size], attention_mask[s : s + batch_size])
            texts.append(_features(core.get_text_features(input_ids=ids.to(device), attention_mask=mask.to(device))))
    model.train(was_training)
    image_embeds = torch.cat(images).float() if images else torch.empty(0, device=device)
    text_embeds = torch.cat(texts).float() if texts else torch.empty(0, device=device)
    return F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object from get_*_features, 4.x a tensor
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out[0]


def retrieval_metrics(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, groups: Sequence[int], logit_scale: float | None = None
) -> dict[str, float]:
    """Recall@1/5 both ways for aligned pairs (pair i = image i, text i); relevance by group."""
    sim = image_embeds @ text_embeds.t()
    i2t = recall_at_k(sim, groups, groups)
    t2i = recall_at_k(sim.t(), groups, groups)
    metrics = {
        "i2t_r1": i2t[1], "i2t_r5": i2t[5], "t2i_r1": t2i[1], "t2i_r5": t2i[5],
        "mean_recall": (i2t[1] + i2t[5] + t2i[1] + t2i[5]) / 4,
    }  # fmt: skip
    if logit_scale is not None:
        metrics["val_loss"] = float(contrastive_loss(math.exp(logit_scale) * sim))
    return metrics


def _group_ids(captions: Sequence[str]) -> list[int]:
    ids: dict[str, int] = {}
    return [ids.setdefault(c, len(ids)) for c in captions]


# --------------------------------------------------------------------------- training


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resolve_precision(config: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    precision = config.precision
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _epoch_order(train_idx: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    # a pure function of (seed, epoch): resuming mid-epoch replays the same order
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return train_idx[torch.randperm(train_idx.numel(), generator=gen)]


def finetune(config: FinetuneConfig, *, progress: bool = True) -> FinetuneResult:
    """Train with CLIP's contrastive objective; see the module docstring for the outputs."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    if config.batch_size < 2:
        raise ValueError("batch_size must be >= 2 for an in-batch contrastive loss")
    if config.grad_accum < 1:
        raise ValueError("grad_accum must be >= 1")
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = _resolve_precision(config, device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, processor = _load_model_and_processor(config, out)
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    if config.lora_rank > 0:
        model = _apply_lora(model, config)
    else:
        select_trainable(model, config.train)
    model.to(device)

    # ---- data: decode once, tokenise once, split once (seeded)
    pairs = read_pairs(config.manifest, path_column=config.path_column, caption_column=config.caption_column)
    pixels, kept, skipped_files = tensorize_images(image_processor, [p for p, _ in pairs], workers=config.num_workers)
    pairs = [pairs[i] for i in kept]  # an unreadable image drops its pair, not the run
    captions = [c for _, c in pairs]
    input_ids, attention_mask = tokenize(tokenizer, captions)
    if device.type == "cuda":  # the whole (small) dataset lives on the GPU
        pixels, input_ids, attention_mask = pixels.to(device), input_ids.to(device), attention_mask.to(device)
    n = len(pairs)
    split = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_val = int(round(n * config.val_fraction)) if config.val_fraction > 0 else 0
    if n_val and n - n_val < 2:
        raise ValueError(f"{n} pairs leave too few for training after a {config.val_fraction} validation split")
    val_idx, train_idx = split[:n_val].sort().values, split[n_val:]
    val_groups = _group_ids([captions[i] for i in val_idx.tolist()])
    normalizer = PixelNormalizer(image_processor, device)

    micro_per_epoch = max(1, train_idx.numel() // config.batch_size)  # drop the ragged tail
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    warmup = config.warmup_steps if config.warmup_steps is not None else int(round(config.warmup_ratio * total_steps))

    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup=warmup, total=total_steps, min_ratio=config.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    state: dict[str, Any] = {
        "epoch": 0, "micro_step": 0, "global_step": 0, "metrics": [], "best_metric": None, "best_epoch": 0,
        "loss_sum": 0.0, "loss_count": 0, "train_seconds": 0.0, "pairs_seen": 0,
    }  # fmt: skip
    if config.resume:
        state = _load_checkpoint(ckpt_dir, model, optimizer, scheduler, scaler, device, state)

    def save_checkpoint() -> None:
        _write_checkpoint(ckpt_dir, model, optimizer, scheduler, scaler, state, config)

    model.train()
    stopped_early = False
    bar = tqdm(total=total_steps, initial=state["global_step"], disable=not progress, desc="finetune", unit="step")
    try:
        while state["epoch"] < config.epochs:
            epoch = state["epoch"]
            order = _epoch_order(train_idx, config.seed, epoch)
            t0 = time.perf_counter()
            micro = state["micro_step"]
            while micro < micro_per_epoch:
                # one optimizer step over up to grad_accum micro-batches
                n_micro = min(config.grad_accum, micro_per_epoch - micro)
                step_loss = 0.0
                for k in range(n_micro):
                    lo = (micro + k) * config.batch_size
                    idx = order[lo : lo + config.batch_size].to(pixels.device)
                    ids, mask = _trim(input_ids[idx], attention_mask[idx])
                    batch_pixels = normalizer(pixels[idx].to(device, non_blocking=True))
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        outputs = model(input_ids=ids.to(device), attention_mask=mask.to(device), pixel_values=batch_pixels)
                    logits = clip_logits(outputs.image_embeds, outputs.text_embeds, _core(model).logit_scale)
                    loss = contrastive_loss(logits)
                    scaler.scale(loss / n_micro).backward()
                    step_loss += float(loss.detach()) / n_micro
                    state["pairs_seen"] += int(idx.numel())
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                clamp_logit_scale(model)
                micro += n_micro
                state["micro_step"] = micro
                state["global_step"] += 1
                state["loss_sum"] += step_loss
                state["loss_count"] += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                hit_max = config.max_steps is not None and state["global_step"] >= config.max_steps
                if micro < micro_per_epoch and (
                    hit_max or (config.save_every_steps and state["global_step"] % config.save_every_steps == 0)
                ):
                    state["train_seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    save_checkpoint()
                if hit_max and micro < micro_per_epoch:
                    stopped_early = True
                    return _result(state, out, stopped_early, skipped_files)
            if device.type == "cuda":
                torch.cuda.synchronize()
            state["train_seconds"] += time.perf_counter() - t0
            _end_epoch(model, processor, config, state, out, pixels, input_ids, attention_mask, val_idx, val_groups,
                       normalizer, amp_dtype)  # fmt: skip
            save_checkpoint()
            if config.max_steps is not None and state["global_step"] >= config.max_steps and state["epoch"] < config.epochs:
                stopped_early = True
                break
    finally:
        bar.close()
    return _result(state, out, stopped_early, skipped_files)


def _end_epoch(
    model: torch.nn.Module, processor: Any, config: FinetuneConfig, state: dict[str, Any], out: Path,
    pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, val_idx: torch.Tensor,
    val_groups: list[int], normalizer: PixelNormalizer, amp_dtype: torch.dtype | None,
) -> None:
    """Evaluate on the held-out split, record metrics, keep the best model in `out`."""
    epoch = state["epoch"] + 1
    record: dict[str, float] = {
        "epoch": epoch,
        "step": state["global_step"],
        "train_loss": state["loss_sum"] / max(1, state["loss_count"]),
        "logit_scale": float(_core(model).logit_scale.detach().exp()),
        "pairs_per_second": state["pairs_seen"] / max(1e-9, state["train_seconds"]),
    }
    if val_idx.numel() >= 2:
        vi = val_idx.to(pixels.device)
        img, txt = encode(model, pixels[vi], input_ids[vi], attention_mask[vi], normalizer,
                          batch_size=config.eval_batch_size, autocast_dtype=amp_dtype)  # fmt: skip
        record.update(retrieval_metrics(img, txt, val_groups, float(_core(model).logit_scale.detach())))
    state["metrics"].append(record)
    # without a validation split the latest epoch is the best one
    score = record.get("mean_recall", float(epoch))
    if state["best_metric"] is None or score > state["best_metric"]:
        state["best_metric"], state["best_epoch"] = score, epoch
        _save_pretrained(model, processor, out, config.save_dtype)
    (out / "metrics.json").write_text(
        json.dumps({"best_epoch": state["best_epoch"], "epochs": state["metrics"]}, indent=2), encoding="utf-8"
    )
    log.info("epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
    state.update(epoch=epoch, micro_step=0, loss_sum=0.0, loss_count=0)


def _result(state: dict[str, Any], out: Path, stopped_early: bool, skipped: list[SkippedFile]) -> FinetuneResult:
    return FinetuneResult(
        best_epoch=state["best_epoch"],
        metrics=list(state["metrics"]),
        out_dir=out,
        pairs_per_second=state["pairs_seen"] / max(1e-9, state["train_seconds"]),
        global_step=state["global_step"],
        best_metric=state["best_metric"],
        stopped_early=stopped_early,
        skipped=list(skipped),
    )


def _write_checkpoint(
    ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
    state: dict[str, Any], config: FinetuneConfig,
) -> None:
    """Write checkpoint-last atomically (a temp dir renamed over the old one)."""
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "state": state,
            "rng": _rng_state(),
        },
        tmp / _STATE_FILE,
    )
    summary = {k: v for k, v in state.items() if k != "metrics"}
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    (tmp / "trainer_state.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    tmp.rename(ckpt_dir)


def _load_checkpoint(
    ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
    device: torch.device, default: dict[str, Any],
) -> dict[str, Any]:
    path = ckpt_dir / _STATE_FILE
    if not path.is_file():
        log.warning("resume=True but %s does not exist: starting from scratch", path)
        return default
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    model.to(device)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    scaler.load_state_dict(blob["scaler"])
    _set_rng_state(blob["rng"])
    state = dict(default)
    state.update(blob["state"])
    return state


# --------------------------------------------------------------------------- synthetic benchmark


def evaluate_synthetic(
    model_dir: str | Path,
    *,
    n: int = 500,
    seed: int = 12345,
    lang: str = "en",
    image_size: int | None = None,
    device: str = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    """Held-out figures of a model on a fresh synthetic gallery (see mmrag.training.synthetic).

    - text->image recall@1/@5 over `n` images, each image's caption a query. A hit
      is a retrieved image whose attributes equal the query's (so every gallery
      image with the same caption is relevant; captions name shape, colour, size,
      position of each object and the background, so duplicates are rare).
    - zero-shot accuracy on the single-object images over all colour x shape
      classes, prompt "a photo of a {color} {shape}." (Chinese: "一张{颜色}{形状}的照片。").
    """
    from transformers import AutoModel, AutoProcessor

    from mmrag.training import synthetic

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    if image_size is None:
        image_size = int(model.config.vision_config.image_size)
    samples = synthetic.generate(n, seed=seed, image_size=image_size)
    pixels = pixels_uint8(processor.image_processor, [s.image for s in samples])
    captions = [s.caption(lang) for s in samples]
    ids, mask = tokenize(processor.tokenizer, captions)
    normalizer = PixelNormalizer(processor.image_processor, torch.device(device))
    img, txt = encode(model, pixels, ids, mask, normalizer, batch_size=batch_size)
    groups = _group_ids(captions)
    t2i = recall_at_k(txt @ img.t(), groups, groups)
    classes = synthetic.zero_shot_classes()
    p_ids, p_mask = tokenize(processor.tokenizer, [synthetic.class_prompt(c, s, lang) for c, s in classes])
    _, prompt_emb = encode(model, pixels[:0], p_ids, p_mask, normalizer, batch_size=batch_size)
    single = [i for i, s in enumerate(samples) if s.attributes.num_objects == 1]
    truth = torch.tensor([classes.index((samples[i].attributes.objects[0].color, samples[i].attributes.objects[0].shape)) for i in single])
    pred = (img[single] @ prompt_emb.t()).argmax(dim=1).cpu()
    return {
        "t2i_recall@1": t2i[1],
        "t2i_recall@5": t2i[5],
        "zero_shot_accuracy": float((pred == truth).float().mean()),
        "gallery_size": n,
        "unique_captions": len(set(captions)),
        "zero_shot_images": len(single),
        "zero_shot_classes": len(classes),
        "seed": seed,
        "lang": lang,
    }
