"""Wiring: builds the store and embedder from settings, in one place.

The CLI, pipelines and examples go through here; library code receives its
collaborators as arguments, so tests pass real tiny models or fakes directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrag.settings import Settings, get_settings


@dataclass
class App:
    settings: Settings = field(default_factory=get_settings)
    _store: Any = None
    _embedders: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        if self._store is None:
            from mmrag.store import open_store
            from mmrag.store.retry import RetryingStore, RetryPolicy

            store = open_store(self.settings)
            if self.settings.qdrant_url and self.settings.qdrant_url != ":memory:":
                # Only a remote server has transient failures worth retrying.
                store = RetryingStore(store, RetryPolicy.from_settings(self.settings))
            self._store = store
        return self._store

    def collection_model(self, collection: str) -> str | None:
        """The model id recorded in an existing collection, if any."""
        store = self.store
        spec = store.get_spec(store.resolve(collection))
        return spec.model_id if spec else None

    def embedder(self, model: str | None = None, *, collection: str | None = None) -> Any:
        """Load (once per process) the model: explicit > the collection's own > settings default."""
        name = model or (self.collection_model(collection) if collection else None) or self.settings.model
        if name not in self._embedders:
            from mmrag.embedders import load_embedder
            from mmrag.embedders.registry import resolve_model, resolve_runtime

            spec = resolve_model(name)
            s = self.settings
            runtime = resolve_runtime(s.backend, spec, device=s.device, quantize=s.quantize)
            if s.threads and runtime == "torch":  # ONNX Runtime gets them per session; torch stays unimported
                import torch

                torch.set_num_threads(s.threads)

            embedder = load_embedder(
                spec,
                device=s.device,
                quantize=s.quantize,
                fast_preprocess=s.fast_preprocess,
                batch_size=s.batch_size,
                text_batch_size=s.text_batch_size,
                backend=runtime,
                threads=s.threads,
                onnx_cache=self.onnx_cache,
            )
            if self.settings.auto_batch and embedder.device != "cpu":
                from mmrag.embedders.tuning import tune_batch_size

                tune_batch_size(embedder, start=self.settings.batch_size)
            self._embedders[name] = embedder
        return self._embedders[name]

    @property
    def onnx_cache(self) -> Path:
        """Exports of models that cannot be cached beside themselves (bundled, hub, read-only)."""
        return Path(self.settings.home) / "cache" / "onnx"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
