"""Torch vs ONNX Runtime fp32 vs ORT int8: model-only images/s and a cold `mmrag search`.

One run, interleaved rounds (torch, onnx, int8, torch, ...) so that the load other
work puts on a shared machine hits every backend alike; the ratios are the result,
the absolute figures come with `uptime`'s load. Random-init ViT-B/32 (speed does not
depend on the weights) and the bundled reference model.

    python -m bench.onnx_speed --rounds 3 --batch-sizes 32,8

`--ingest` adds the ingest comparison on both corpora (12-MP photos, mixed sizes), in
interleaved rounds: for torch, ONNX fp32 and ONNX int8, model-only, decode-only and
end-to-end `run_ingest` (each in its own subprocess, `bench.ingest`'s phases), the
bound `1/(1/model + 1/decode)` that two shared cores allow, and rclip's own indexing
(`--rclip-venv`, a separate Python 3.12 venv with `pip install rclip`) on the same
random-init ViT-B/32-256 exported under rclip's file names. Hold `flock /tmp/bench.lock`.

    flock /tmp/bench.lock python -m bench.onnx_speed --ingest --rclip-venv /work/rclip-venv --json bench/results/onnx-cpu.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    default_cache_dir,
    list_images,
    make_clip_dir,
    make_mixed_corpus,
    make_photo_corpus,
    run_phase,
    write_json,
)

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


# --------------------------------------------------------------------------- ingest comparison and rclip

RCLIP_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip/model_download.py: MODEL_SUBDIR
RCLIP_LEGAL = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")  # MODEL_LEGAL_FILES
RCLIP_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"  # TOKENIZER_VOCAB
RCLIP_BATCH = 8  # rclip's default --indexing-batch-size

_RCLIP_INDEX = """
import json, sys, time
import numpy as np
from rclip.main import init_rclip
# Model load outside the timing, as mmrag's end-to-end phase warms up before it starts the clock.
rclip, model, db = init_rclip(sys.argv[1], int(sys.argv[2]), no_indexing=True)
model.compute_preprocessed_image_features([np.zeros((3, 256, 256), np.float32)] * 2, for_indexing=True)
t = time.perf_counter()
rclip.ensure_index(sys.argv[1])
wall = time.perf_counter() - t
n = db._con.execute("SELECT COUNT(*) FROM images WHERE deleted IS NULL").fetchone()[0]
print(json.dumps({"images": n, "seconds": round(wall, 3), "images_per_s": round(n / wall, 2)}))
"""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def rclip_datadir(model_dir: Path, out: Path) -> Path:
    """Export `model_dir`'s towers under rclip's names (visual.onnx, textual.onnx; input "input")."""
    target = out / RCLIP_SUBDIR
    if all((target / f).is_file() for f in ("visual.onnx", "textual.onnx")) and (out / RCLIP_VOCAB).is_file():
        return out
    if (target / "visual.onnx").is_file() and (target / "textual.onnx").is_file():
        _write_rclip_assets(model_dir, out)
        return out
    import torch
    from transformers import CLIPModel

    target.mkdir(parents=True, exist_ok=True)
    model = CLIPModel.from_pretrained(model_dir).eval()
    size = model.config.vision_config.image_size

    from mmrag.embedders.hf import projected_features  # the product's own export wrapper rule

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input):  # noqa: A002 - rclip feeds {"input": batch}
            return projected_features(self.model.get_image_features(pixel_values=input))

    class Textual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input):  # noqa: A002
            return projected_features(self.model.get_text_features(input_ids=input))

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python bools in transformers' code
        torch.onnx.export(Visual(), (torch.zeros(1, 3, size, size),), str(target / "visual.onnx"), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, opset_version=17,
                          dynamo=False)
        torch.onnx.export(Textual(), (torch.zeros(1, 77, dtype=torch.long),), str(target / "textual.onnx"),
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, opset_version=17, dynamo=False)
    _write_rclip_assets(model_dir, out)
    return out


def _write_rclip_assets(model_dir: Path, out: Path) -> None:
    # rclip's BPE file (a header line, then merges), from the model's own tokenizer: it is
    # not downloadable here, and indexing never tokenizes.
    vocab = out / RCLIP_VOCAB
    vocab.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(vocab, "wt", encoding="utf-8") as f:
        f.write((Path(model_dir) / "merges.txt").read_text(encoding="utf-8"))
    for name in RCLIP_LEGAL:  # rclip only checks that they exist before it would download
        (out / name).write_text("random-init weights for benchmarking; not a released model\n")


def rclip_index(venv: Path, datadir: Path, corpus: Path, batch: int) -> dict[str, Any]:
    """rclip's own indexing (decode pool + ORT) of `corpus` into a fresh database."""
    db = datadir / "db.sqlite3"
    db.unlink(missing_ok=True)
    env = {**os.environ, "RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", _RCLIP_INDEX, str(corpus), str(batch)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"rclip indexing failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ingest_comparison(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    cache = default_cache_dir()
    model_dir = make_clip_dir(cache, "b32-256")
    corpora = {}
    if args.photos:
        corpora["photos"] = make_photo_corpus(cache / f"photos-{args.photos}", args.photos)
    if args.mixed:
        corpora["mixed"] = make_mixed_corpus(cache / f"mixed-{args.mixed}", args.mixed)
    venv = args.rclip_venv
    if venv is not None and not (venv / "bin" / "python").is_file():
        log(f"rclip: no venv at {venv}; skipping rclip")
        venv = None
    elif venv is None:
        log("rclip: --rclip-venv not given; skipping rclip")
    datadir = rclip_datadir(model_dir, cache / "rclip-data") if venv else None
    raw: dict[str, Any] = {}
    for rnd in range(args.rounds):
        for name, folder in corpora.items():
            files = [str(f) for f in list_images(folder)]
            for variant, (backend, quant) in VARIANTS.items():
                base = {"model_dir": str(model_dir), "device": "cpu", "backend": backend, "quantize": quant,
                        "batch_size": args.ingest_batch, "workers": 0, "threads": 0, "executor": "auto",
                        "fast": not args.no_fast_preprocess}  # the product default: JPEG draft decoding
                log(f"[round {rnd + 1}] {name} {variant}")
                row = {"uptime": uptime()}
                row["model_only"] = run_phase("bench.ingest", "model_only", {
                    **base, "files": files, "n": max(len(files), 2 * args.ingest_batch), "min_seconds": args.model_min_seconds})
                row["decode_only"] = run_phase("bench.ingest", "decode_only", {**base, "corpus": str(folder)})
                # e2e: the product's schedule (on the CPU the pool and the model take turns);
                # e2e_overlap: the pool decoding the next batch while the model runs (the GPU schedule)
                for key, overlap in (("e2e", None), ("e2e_overlap", True)):
                    home = Path(tempfile.mkdtemp(prefix="mmrag-bench-home-"))
                    try:
                        row[key] = run_phase("bench.ingest", "e2e", {**base, "corpus": str(folder), "home": str(home),
                                                                    "overlap": overlap})
                    finally:
                        shutil.rmtree(home, ignore_errors=True)
                raw.setdefault(name, {}).setdefault(variant, []).append(row)
            if venv:
                log(f"[round {rnd + 1}] {name} rclip")
                row = {"uptime": uptime(), "e2e": rclip_index(venv, datadir, folder, RCLIP_BATCH)}
                raw.setdefault(name, {}).setdefault("rclip", []).append(row)
    return {"model": "random-init ViT-B/32 at 256 px (rclip's ViT-B-32-256 shape)", "batch_size": args.ingest_batch,
            "rclip_batch_size": RCLIP_BATCH, "corpora": {n: len(list_images(f)) for n, f in corpora.items()},
            "rounds": raw, "summary": summarize(raw)}


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key]["images_per_s"] for r in rows if key in r and r[key].get("images_per_s")]
    return round(float(np.median(values)), 2) if values else None


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds; bound = 1/(1/model + 1/decode): both stages share the same cores."""
    out: dict[str, Any] = {}
    for corpus, variants in raw.items():
        rows: dict[str, Any] = {}
        for variant, runs in variants.items():
            r = {k: _median(runs, k) for k in ("model_only", "decode_only", "e2e", "e2e_overlap")}
            if r["model_only"] and r["decode_only"]:
                bound = 1.0 / (1.0 / r["model_only"] + 1.0 / r["decode_only"])
                r["bound"] = round(bound, 2)
                r["e2e_vs_bound"] = round(r["e2e"] / bound, 3) if r["e2e"] else None
                r["e2e_overlap_vs_bound"] = round(r["e2e_overlap"] / bound, 3) if r["e2e_overlap"] else None
            rows[variant] = {k: v for k, v in r.items() if v is not None}
        rclip = rows.get("rclip", {}).get("e2e")
        for variant in VARIANTS:
            if rclip and rows.get(variant, {}).get("e2e"):
                rows[variant]["e2e_vs_rclip"] = round(rows[variant]["e2e"] / rclip, 3)
        out[corpus] = rows
    return out


def int8_report() -> dict[str, Any]:
    """int8 vs fp32 (ORT): cosine on random pixels (b32) and recall@1 on the bundled reference model."""
    from bench.ingest import REFERENCE_MODEL

    recall = run_phase("bench.ingest", "recall", {"model_dir": str(REFERENCE_MODEL), "backend": "onnx", "batch_size": 32})
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0] if Path("/proc/cpuinfo").exists() else ""
    return {"recall_reference_onnx": recall,
            "cpu_vnni": {f: f in flags.split() for f in ("avx512_vnni", "avx_vnni", "avx512f", "amx_int8")}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=64, help="images per model-only pass")
    ap.add_argument("--batch-sizes", default="32,8", help="8 is rclip's batch size")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--ingest", action="store_true", help="add the ingest comparison on both corpora (and rclip)")
    ap.add_argument("--only-ingest", action="store_true", help="the ingest comparison and the int8 report alone")
    ap.add_argument("--photos", type=int, default=96,
                    help="12-MP photos in the photo corpus (0 skips it); fewer and the fixed costs (collection "
                         "creation, the first batch) weigh on the rate")
    ap.add_argument("--mixed", type=int, default=96, help="images in the mixed corpus (0 skips it)")
    ap.add_argument("--ingest-batch", type=int, default=32)
    ap.add_argument("--model-min-seconds", type=float, default=2.0)
    ap.add_argument("--no-fast-preprocess", action="store_true", help="exact JPEG decoding (the product's default is draft)")
    ap.add_argument("--rclip-venv", type=Path, default=None, help="rclip's own venv; without it rclip is skipped")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    b32 = str(make_clip_dir(default_cache_dir(), "b32"))
    result: dict[str, Any] = {"uptime_before": uptime(), "cpu": _cpu_model()}
    if args.ingest or args.only_ingest:
        result["ingest"] = ingest_comparison(args, log)
        result["int8"] = int8_report()
    if args.only_ingest:
        result["uptime_after"] = uptime()
        _write(result, args.json)
        return
    result["model_only_b32"] = model_only(b32, [int(b) for b in args.batch_sizes.split(",")], args.rounds, args.n, args.threads)
    result["fidelity_b32"] = fidelity(b32)
    result["cold_search_bundled"] = cold_search("mmrag-shapes-en", args.rounds)
    result["cold_search_b32"] = cold_search(b32, args.rounds)
    result["uptime_after"] = uptime()
    _write(result, args.json)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _write(result: dict[str, Any], path: Path | None) -> None:
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if path:
        write_json(result, path)


if __name__ == "__main__":
    main()
