"""Does this CPU's VNNI make int8 faster, and by how much?

ONNX Runtime's MLAS picks its int8 kernel from CPUID and has no switch, and this VM
refuses CPUID faulting (`arch_prctl(ARCH_SET_CPUID)` is ENODEV), so ORT cannot be run
with VNNI hidden. oneDNN can: `ONEDNN_MAX_CPU_ISA` caps the ISA it dispatches to. So,
in one run, on ViT-B/32's MLP GEMM (50 tokens x 32 images, 768 -> 3072):

- oneDNN int8 (torch's onednn quantized engine) with VNNI and with it capped off
  (AVX512_CORE, and AVX2), each in a fresh process, checked with ONEDNN_VERBOSE;
- ORT int8 (MatMulInteger, u8 x s8) and ORT fp32 (MatMul) on the same shape, to
  place MLAS's kernel next to the two oneDNN figures.

    python -m bench.vnni --repeats 30
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

from bench.common import write_json

M, K, N = 32 * 50, 768, 3072
ISAS = ("AVX512_CORE_VNNI", "AVX512_CORE", "AVX2")

_ONEDNN = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(int(sys.argv[1]))
torch.backends.quantized.engine = "onednn"
from torch.ao.nn.quantized.dynamic import Linear
M, K, N, repeats = (int(v) for v in sys.argv[2:6])
x = torch.randn(M, K)
w = torch.randn(N, K) * 0.05
q = Linear(K, N)
q.set_weight_bias(torch.quantize_per_tensor(w, 0.05 / 64, 0, torch.qint8), torch.zeros(N))
for _ in range(3):
    q(x)
times = []
for _ in range(repeats):
    t = time.perf_counter(); q(x); times.append(time.perf_counter() - t)
print(json.dumps({"ms": round(1000 * sorted(times)[len(times) // 2], 3)}))
"""


def onednn_int8(isa: str, threads: int, repeats: int) -> dict:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", _ONEDNN, str(threads), str(M), str(K), str(N), str(repeats)],
                          env=env, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    isa_line = next((ln.split("isa:", 1)[1] for ln in lines if ",isa:" in ln), "?")
    kernel = next((ln.split(",")[6] for ln in lines if ",exec,cpu,matmul," in ln), "?")
    return {**json.loads(lines[-1]), "isa": isa_line.strip(), "kernel": kernel}


def _matmul_model(path: Path, integer: bool) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-127, 128, (K, N), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", a_type, [M, K])],
                              [helper.make_tensor_value_info("Y", y_type, [M, N])], initializer=[b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def ort_gemm(integer: bool, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        _matmul_model(path, integer)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1)
        a = rng.integers(0, 256, (M, K), dtype=np.uint8) if integer else rng.standard_normal((M, K)).astype(np.float32)
        for _ in range(3):
            sess.run(None, {"A": a})
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, {"A": a})
            times.append(time.perf_counter() - t)
    return {"ms": round(1000 * sorted(times)[len(times) // 2], 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    rows: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for isa in ISAS:
            rows.setdefault(f"onednn-int8-{isa}", []).append(onednn_int8(isa, args.threads, args.repeats))
        rows.setdefault("ort-int8-MatMulInteger", []).append(ort_gemm(True, args.threads, args.repeats))
        rows.setdefault("ort-fp32-MatMul", []).append(ort_gemm(False, args.threads, args.repeats))
    med = {k: {**v[0], "ms": round(float(np.median([r["ms"] for r in v])), 3)} for k, v in rows.items()}
    gops = 2 * M * K * N / 1e9
    for v in med.values():
        v["gops"] = round(gops / (v["ms"] / 1000), 1)
    vnni, core = med["onednn-int8-AVX512_CORE_VNNI"]["ms"], med["onednn-int8-AVX512_CORE"]["ms"]
    result = {
        "shape": {"M": M, "K": K, "N": N}, "threads": args.threads,
        "load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu_flags": {f: f in flags for f in ("avx512_vnni", "avx_vnni", "avx512bw", "amx_int8")},
        "results": med,
        "onednn_vnni_speedup": round(core / vnni, 2),
        "ort_int8_vs_fp32": round(med["ort-fp32-MatMul"]["ms"] / med["ort-int8-MatMulInteger"]["ms"], 2),
        "ort_int8_vs_onednn_vnni": round(vnni / med["ort-int8-MatMulInteger"]["ms"], 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
