"""Choosing the torch device an embedder runs on."""

from __future__ import annotations

import torch


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(pref: str = "auto") -> str:
    """Resolve a device preference to a concrete torch device string.

    "auto" picks cuda, then mps, then cpu. An explicit device is checked so that a
    missing accelerator fails here, with a clear message, rather than deep in torch.
    """
    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    if pref == "cpu":
        return "cpu"
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} requested but CUDA is not available (use 'auto' or 'cpu')")
        if ":" in pref:
            index = int(pref.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise ValueError(f"device {pref!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return pref
    if pref == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' requested but MPS is not available (use 'auto' or 'cpu')")
        return "mps"
    raise ValueError(f"unknown device {pref!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def is_gpu(device: str) -> bool:
    return device != "cpu"
