"""Datasets used to train and test mmrag models (synthetic captioned shapes)."""

from __future__ import annotations

from mmrag.datasets.synthetic import Sample, Scene, ShapeObject, generate, render, write_corpus

__all__ = ["Sample", "Scene", "ShapeObject", "generate", "render", "write_corpus"]
