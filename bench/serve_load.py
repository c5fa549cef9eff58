"""Load test of `mmrag serve`: N concurrent HTTP clients on loopback against an in-process loop.

For each collection size (default 10k and 100k points) this

1. fills an embedded store (cached under `--cache-dir`) straight through `EdgeStore`
   with random unit vectors and plausible payloads (`bench.query.SyntheticCorpus`),
   under a `CollectionSpec` with the bundled reference model `mmrag-shapes-en`'s dim
   and model id, so the server loads that model to embed the queries;
2. times an in-process `MultimodalRetriever.invoke` loop (one thread, the same
   exact/HNSW settings the server uses) for `--duration` seconds: the baseline;
3. starts `python -m mmrag serve` on a free loopback port in a subprocess (the
   embedded store allows one process per shard, so the baseline closes it first),
   waits for /readyz, and runs `--clients` threads, each with its own `httpx.Client`,
   posting text searches (`k=10`, target image) to /api/search until `--duration`
   seconds or `--max-requests` requests, whichever comes first;
4. reports requests/s, p50/p95/p99 latency and errors (any non-200, an exception,
   or an answer without k hits), and the ratios to the in-process loop and to
   clip-retrieval's published back end (about 50 ms and about 20 queries/s).

The measuring part holds `flock` on `--lock` (other benchmarks on the shared machine
take the same lock) and records `uptime`'s load before and after.

    python -m bench.serve_load --json bench/results/serve-load.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, default_cache_dir, write_json
from bench.query import COLLECTION, SyntheticCorpus, fill_store

MODEL = "mmrag-shapes-en"
K = 10
# clip-retrieval's back end, as its README states it: ~50 ms per query, ~20 queries/s.
CLIP_RETRIEVAL = {"latency_ms": 50.0, "queries_per_s": 20.0}
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross")
STORE_VERSION = 1  # bump when the generated store changes


def log(msg: str) -> None:
    print(f"[serve_load] {msg}", file=sys.stderr, flush=True)


def queries(n: int = 60) -> list[str]:
    """Varied English shape queries (the reference model's vocabulary)."""
    out = [f"a photo of a {c} {s}." for c in COLORS for s in SHAPES]
    return [out[i % len(out)] if i < len(out) else f"{out[i % len(out)]} {i}" for i in range(n)]


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no samples")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max())}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {', '.join(map(str, load_average()))}"


@contextmanager
def bench_lock(path: str | None, wait_s: float = 900.0) -> Iterator[float]:
    """Hold `flock(path)` (none when `path` is empty); yields the seconds waited for it."""
    if not path:
        yield 0.0
        return
    start = time.monotonic()
    with open(path, "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start > wait_s:
                    raise RuntimeError(f"{path} held by another benchmark for over {wait_s:.0f} s") from None
                time.sleep(0.5)
        waited = time.monotonic() - start
        if waited > 1:
            log(f"waited {waited:.0f} s for {path}")
        try:
            yield waited
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the store


def build_home(cache: Path, n: int, seed: int, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """An MMRAG_HOME holding collection `bench` with `n` points for `mmrag-shapes-en` (cached)."""
    from mmrag.store import EdgeStore

    dim = reference_dim()
    corpus = SyntheticCorpus(n=n, dim=dim, seed=seed, model_id=MODEL)
    home = cache / f"serve-load-n{n}-d{dim}-s{seed}"
    marker = home / ".done.json"
    params = {**corpus.params(), "serve_load_version": STORE_VERSION}
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        done = None
    if done is not None and done.get("params") == params and not rebuild:
        return home, {**done["build"], "cached": True}
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    with EdgeStore(home) as store:
        seconds = fill_store(store, corpus, 2000)
        count = store.count(COLLECTION)
    if count != n:
        raise RuntimeError(f"built {count} points, expected {n}")
    build = {"build_s": round(seconds, 2), "points": count, "dim": dim}
    marker.write_text(json.dumps({"params": params, "build": build}, indent=1))
    return home, {**build, "cached": False}


def reference_dim() -> int:
    from mmrag.embedders.registry import REFERENCE_DIR

    config = json.loads((REFERENCE_DIR / "clip-shapes-en" / "config.json").read_text())
    return int(config["projection_dim"])


def bench_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMRAG_", "QDRANT_"))}
    env.update({"MMRAG_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


# --------------------------------------------------------------------------- in-process baseline


def measure_inprocess(home: Path, texts: list[str], duration: float, max_requests: int) -> dict[str, Any]:
    """One thread calling `retriever.invoke` in a loop, with the settings `mmrag serve` would use."""
    from mmrag.app import App
    from mmrag.retrieval import MultimodalRetriever
    from mmrag.settings import Settings

    settings = Settings(home=home)
    app = App(settings)
    try:
        retriever = MultimodalRetriever(store=app.store, embedder=app.embedder(collection=COLLECTION),
                                        collection=COLLECTION, k=K, target="image", exact=not settings.hnsw,
                                        hnsw_ef=settings.hnsw_ef if settings.hnsw else None)
        for text in texts[:5]:  # warm-up: first calls allocate
            retriever.invoke(text)
        seconds: list[float] = []
        short = 0
        start = time.perf_counter()
        deadline = start + duration
        while time.perf_counter() < deadline and len(seconds) < max_requests:
            t0 = time.perf_counter()
            docs = retriever.invoke(texts[len(seconds) % len(texts)])
            seconds.append(time.perf_counter() - t0)
            short += len(docs) != K
        wall = time.perf_counter() - start
    finally:
        app.close()
    return {"requests": len(seconds), "wall_s": wall, "requests_per_s": len(seconds) / wall, "errors": short,
            **latency_stats(seconds)}


# --------------------------------------------------------------------------- the server and its clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(home: Path, env: dict[str, str], log_file: Path, start_timeout: float = 180.0) -> Iterator[str]:
    """`python -m mmrag serve` on a free loopback port; yields its base URL once /readyz answers 200."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mmrag", "serve", "-c", COLLECTION, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mmrag serve exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mmrag serve not ready after {start_timeout:.0f} s:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_clients(url: str, texts: list[str], clients: int, duration: float, max_requests: int) -> dict[str, Any]:
    """`clients` threads posting /api/search until the deadline or `max_requests` in all."""
    import httpx

    lock = threading.Lock()
    issued = 0
    seconds: list[float] = []
    errors: list[str] = []
    start_gate = threading.Barrier(clients + 1)

    def client(idx: int) -> None:
        nonlocal issued
        with httpx.Client(base_url=url, timeout=30) as http:
            http.get("/healthz")  # connect before the clock starts
            start_gate.wait()
            while time.perf_counter() < deadline:
                with lock:
                    if issued >= max_requests:
                        return
                    i = issued
                    issued += 1
                body = {"query": texts[i % len(texts)], "k": K, "target": "image"}
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/search", json=body)
                    elapsed = time.perf_counter() - t0
                    problem = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"
                    if problem is None and len(r.json()["hits"]) != K:
                        problem = f"{len(r.json()['hits'])} hits for k={K}"
                except Exception as e:  # noqa: BLE001 - every failure counts as an error
                    elapsed, problem = time.perf_counter() - t0, f"{type(e).__name__}: {e}"
                with lock:
                    seconds.append(elapsed)
                    if problem:
                        errors.append(problem)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    deadline = float("inf")
    for t in threads:
        t.start()
    start_gate.wait()
    start = time.perf_counter()
    deadline = start + duration
    for t in threads:
        t.join(timeout=duration + 60)
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(seconds), "wall_s": wall, "requests_per_s": len(seconds) / wall,
            "errors": len(errors), "error_samples": errors[:5], **latency_stats(seconds)}


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    cache = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    texts = queries()
    report: dict[str, Any] = {
        "bench": "serve_load",
        "model": MODEL,
        "k": K,
        "target": "image",
        "clients": args.clients,
        "duration_s": args.duration,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "anchor": {"clip_retrieval_backend": CLIP_RETRIEVAL},
        "sizes": [],
    }
    for n in args.sizes:
        home, build = build_home(cache, n, args.seed, args.rebuild)
        how = "cached" if build["cached"] else f"built in {build['build_s']} s"
        log(f"{n} points in {home} ({how})")
        env = bench_env(home)
        with bench_lock(args.lock) as waited:
            before = uptime()
            inproc = measure_inprocess(home, texts, args.duration, args.max_requests)
            log(f"in-process: {inproc['requests_per_s']:.1f} q/s, p50 {inproc['p50_ms']:.1f} ms")
            with serve(home, env, cache / f"serve-load-n{n}.log") as url:
                # warm-up: every client's first request, and the server's first embeddings
                run_clients(url, texts, args.clients, 0.5, args.clients * 3)
                http = run_clients(url, texts, args.clients, args.duration, args.max_requests)
            after = uptime()
        log(f"http x{args.clients}: {http['requests_per_s']:.1f} req/s, p50 {http['p50_ms']:.1f} ms, "
            f"p99 {http['p99_ms']:.1f} ms, {http['errors']} errors")
        report["sizes"].append({
            "points": n,
            "build": build,
            "lock_wait_s": round(waited, 1),
            "uptime_before": before,
            "uptime_after": after,
            "in_process": inproc,
            "http": http,
            "ratios": {
                "http_rps_over_in_process_rps": http["requests_per_s"] / inproc["requests_per_s"],
                "http_rps_over_clip_retrieval_qps": http["requests_per_s"] / CLIP_RETRIEVAL["queries_per_s"],
                "http_p50_over_clip_retrieval_latency": http["p50_ms"] / CLIP_RETRIEVAL["latency_ms"],
            },
        })
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"mmrag serve under load: {report['clients']} clients, {report['duration_s']:g} s per size, k={report['k']}, "
             f"model {report['model']} (clip-retrieval back end: ~50 ms, ~20 q/s)",
             f"{'points':>8} {'where':<12} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
             f"{'x in-proc':>9} {'x clip-r q/s':>12}"]
    for row in report["sizes"]:
        for where, m in (("in-process", row["in_process"]), ("http", row["http"])):
            ratio = m["requests_per_s"] / row["in_process"]["requests_per_s"]
            lines.append(f"{row['points']:>8} {where:<12} {m['requests_per_s']:>8.1f} {m['p50_ms']:>8.1f} "
                         f"{m['p95_ms']:>8.1f} {m['p99_ms']:>8.1f} {m['errors']:>6} {ratio:>9.2f} "
                         f"{m['requests_per_s'] / CLIP_RETRIEVAL['queries_per_s']:>12.2f}")
        lines.append(f"{'':>8} load: {row['uptime_before'].split('load average:')[-1].strip()} -> "
                     f"{row['uptime_after'].split('load average:')[-1].strip()}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000],
                   help="collection sizes, comma-separated")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    p.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    p.add_argument("--rebuild", action="store_true", help="build the stores again")
    p.add_argument("--lock", default="/tmp/bench.lock", help="flock held while measuring ('' for none)")
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
        p.error("--clients, --duration and --max-requests must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.json is not None:
        write_json(report, args.json)
        log(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
