"""Wiring: builds the store and embedder from settings, in one place.

The CLI, pipelines and examples go through here; library code receives its
collaborators as arguments, so tests pass real tiny models or fakes directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.errors import RunFailed, UsageError
from mmrag.settings import Settings, get_settings

if TYPE_CHECKING:  # the CLI imports App on every call: keep numpy and qdrant_client off that path
    from mmrag.embedders.base import Embedder
    from mmrag.store.base import Store


def quiet_model_loading() -> None:
    """No transformers "Loading weights" bar and no hub retry chatter: one line of ours instead.

    Imports nothing heavy: an ONNX query path never imports transformers (0.6 s), so when it
    is not loaded yet we set what it reads at import (verbosity from the environment, the
    bar from huggingface_hub's switch), which holds should an export import it later.
    """
    import logging
    import os
    import sys

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        import transformers.utils.logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # transformers copies this switch when it is imported
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def check_reachable(url: str, *, timeout: float = 3.0) -> None:
    """One TCP connect to a Qdrant URL: a closed port fails in milliseconds, naming the URL,
    instead of after the client's own timeouts and our retries (17 s and no URL before)."""
    from mmrag.net import tcp_connect

    try:
        tcp_connect(url, default_port=6333, timeout=timeout)
    except OSError as exc:
        raise RunFailed(
            f"cannot reach Qdrant at {url} ({exc.strerror or exc}). Start the server, fix QDRANT_URL, "
            f"or unset QDRANT_URL to use the embedded store in MMRAG_HOME."
        ) from exc


@dataclass
class App:
    settings: Settings = field(default_factory=get_settings)
    # Called with one status line ("loading model ...") before slow steps; the CLI prints it.
    announce: Callable[[str], None] | None = None
    _store: Store | None = None
    _embedders: dict[str, Embedder] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        if self._store is None:
            from mmrag.store.factory import open_store

            url = self.settings.qdrant_url
            if url and url != ":memory:":
                check_reachable(url, timeout=min(3.0, self.settings.qdrant_timeout))
            store = self._open(open_store)
            if url and url != ":memory:":
                # Only a remote server has transient failures worth retrying (tenacity loads only then).
                from mmrag.store.retry import RetryingStore, RetryPolicy

                store = RetryingStore(store, RetryPolicy.from_settings(self.settings))
            self._store = store
        return self._store

    def _open(self, open_store: Any) -> Any:
        try:
            return open_store(self.settings)
        except PermissionError as exc:
            raise UsageError(
                f"the data directory {self.settings.home} is not writable ({exc.strerror or exc}); the "
                f"embedded store needs write access even to read. Fix its permissions, or set "
                f"MMRAG_HOME (--home) to a writable copy."
            ) from exc

    def collection_spec(self, collection: str) -> Any:
        """The CollectionSpec recorded in an existing collection, or None."""
        store = self.store
        return store.get_spec(store.resolve(collection))

    def collection_model(self, collection: str) -> str | None:
        """The model id recorded in an existing collection, if any."""
        spec = self.collection_spec(collection)
        return spec.model_id if spec else None

    def embedder(self, model: str | None = None, *, collection: str | None = None) -> Embedder:
        """Load (once per process) the model: explicit > the collection's own > settings default.

        With `collection`, the model is checked against the one that filled it (the check
        ingest makes), so no read path embeds queries with a model of another space.
        """
        from mmrag.store.schema import check_model

        spec = self.collection_spec(collection) if collection else None
        embedder = self._load(model or (spec.model_id if spec else None) or self.settings.model)
        check_model(spec, embedder.info)
        return embedder

    def _load(self, name: str) -> Any:
        if name not in self._embedders:
            if self.announce is not None:
                self.announce(f"loading model {name} ...")
            quiet_model_loading()
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
