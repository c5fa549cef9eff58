"""Torch vs ONNX Runtime fp32 vs ORT int8: model-only images/s and a cold `mmrag search`.

One run, interleaved rounds (torch, onnx, int8, torch, ...) so that the load other
work puts on a shared machine hits every backend alike; the ratios are the result,
the absolute figures come with `uptime`'s load. Random-init ViT-B/32 (speed does not
depend on the weights) and the bundled reference model.

    python -m bench.onnx_speed --rounds 3 --batch-sizes 32,8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import default_cache_dir, make_clip_dir

VARIANTS = {"torch": ("torch", None), "onnx": ("onnx", None), "onnx-int8": ("onnx", "int8")}


def _load(model: str, variant: str, batch: int, threads: int):
    from mmrag.embedders import load_embedder

    backend, quantize = VARIANTS[variant]
    if backend == "torch" and threads:
        import torch

        torch.set_num_threads(threads)
    return load_embedder(model, device="cpu", backend=backend, quantize=quantize, batch_size=batch,
                         threads=threads, onnx_cache=default_cache_dir() / "onnx")


def model_only(model: str, batch_sizes: list[int], rounds: int, n: int, threads: int) -> dict:
    out: dict = {}
    embedders = {(v, b): _load(model, v, b, threads) for v in VARIANTS for b in batch_sizes}
    size = next(iter(embedders.values())).info.image_size
    pixels = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    for e in embedders.values():
        e.embed_pixels(pixels[: min(8, n)])  # warm-up: session init, int8 copy
    for _ in range(rounds):
        for (v, b), e in embedders.items():
            t = time.perf_counter()
            e.embed_pixels(pixels)
            out.setdefault(f"{v}@{b}", []).append(n / (time.perf_counter() - t))
    return {k: round(float(np.median(v)), 2) for k, v in out.items()}


def fidelity(model: str) -> dict:
    ref = _load(model, "torch", 32, 0)
    size = ref.info.image_size
    pixels = np.random.default_rng(1).standard_normal((32, 3, size, size)).astype(np.float32)
    base = ref.embed_pixels(pixels)
    res = {}
    for v in ("onnx", "onnx-int8"):
        got = _load(model, v, 32, 0).embed_pixels(pixels)
        cos = np.sum(got * base, axis=1)
        res[v] = {"max_abs_diff": float(np.abs(got - base).max()), "mean_cos": float(cos.mean()), "min_cos": float(cos.min())}
    return res


def cold_search(model: str, rounds: int) -> dict:
    """Wall time of `python -m mmrag search` in a fresh process, after one warm-up that fills caches."""
    res: dict = {}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MMRAG_HOME": home, "MMRAG_MODEL": model, "HF_HUB_OFFLINE": "1"}
        corpus = Path(home) / "corpus"
        corpus.mkdir()
        from PIL import Image

        Image.new("RGB", (64, 48), (200, 10, 10)).save(corpus / "red.png")
        for backend in ("torch", "onnx"):
            e = {**env, "MMRAG_BACKEND": backend}
            subprocess.run([sys.executable, "-m", "mmrag", "ingest", str(corpus), "-q", "-c", backend], env=e,
                           check=True, capture_output=True)
        for _ in range(rounds):
            for backend in ("torch", "onnx"):
                e = {**env, "MMRAG_BACKEND": backend}
                t = time.perf_counter()
                proc = subprocess.Popen([sys.executable, "-m", "mmrag", "search", "red", "-c", backend], env=e,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                first = proc.stderr.readline()
                t_first = time.perf_counter() - t
                proc.communicate()
                wall = time.perf_counter() - t
                assert proc.returncode == 0
                res.setdefault(backend, {"wall_s": [], "first_stderr_s": [], "first_line": first.strip()})
                res[backend]["wall_s"].append(round(wall, 2))
                res[backend]["first_stderr_s"].append(round(t_first, 3))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=64, help="images per model-only pass")
    ap.add_argument("--batch-sizes", default="32,8", help="8 is rclip's batch size")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    b32 = str(make_clip_dir(default_cache_dir(), "b32"))
    result = {"uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    result["model_only_b32"] = model_only(b32, [int(b) for b in args.batch_sizes.split(",")], args.rounds, args.n, args.threads)
    result["fidelity_b32"] = fidelity(b32)
    result["cold_search_bundled"] = cold_search("mmrag-shapes-en", args.rounds)
    result["cold_search_b32"] = cold_search(b32, args.rounds)
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
