"""Wiring: builds the store and embedder from settings, in one place.

The CLI, pipelines and examples go through here; library code receives its
collaborators as arguments, so tests pass real tiny models or fakes directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmrag.settings import Settings, get_settings

if TYPE_CHECKING:  # the CLI imports App on every call: keep numpy and qdrant_client off that path
    from mmrag.embedders.base import Embedder
    from mmrag.store.base import Store


@dataclass
class App:
    settings: Settings = field(default_factory=get_settings)
    _store: Store | None = None
    _embedders: dict[str, Embedder] = field(default_factory=dict)

    @property
    def store(self) -> Store:
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

    def embedder(self, model: str | None = None, *, collection: str | None = None) -> Embedder:
        """Load (once per process) the model: explicit > the collection's own > settings default."""
        name = model or (self.collection_model(collection) if collection else None) or self.settings.model
        if name not in self._embedders:
            from mmrag.embedders import load_embedder

            if self.settings.torch_threads:
                import torch

                torch.set_num_threads(self.settings.torch_threads)

            embedder = load_embedder(
                name,
                device=self.settings.device,
                quantize=self.settings.quantize,
                fast_preprocess=self.settings.fast_preprocess,
                batch_size=self.settings.batch_size,
                text_batch_size=self.settings.text_batch_size,
            )
            if self.settings.auto_batch and embedder.device != "cpu":
                from mmrag.embedders.tuning import tune_batch_size

                tune_batch_size(embedder, start=self.settings.batch_size)
            self._embedders[name] = embedder
        return self._embedders[name]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
