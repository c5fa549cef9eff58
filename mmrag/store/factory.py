"""Pick the store backend from `Settings` (the factory itself never reads the environment)."""

from __future__ import annotations

import math
from typing import Any

from mmrag.settings import Settings
from mmrag.store.base import Store

MEMORY_URL = ":memory:"


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    return dict(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        https=settings.qdrant_https,
        prefer_grpc=settings.qdrant_prefer_grpc,
        # qdrant-client types the timeout as whole seconds; round up so it never shrinks to 0
        timeout=int(math.ceil(settings.qdrant_timeout)),
    )


def open_store(settings: Settings) -> Store:
    """`QDRANT_URL` set: a Qdrant server (`:memory:`: an in-process one); else the embedded EdgeStore in `home`."""
    if not settings.qdrant_url:
        from mmrag.store.edge import EdgeStore

        return EdgeStore(settings.home, lock_wait_s=settings.store_lock_wait_seconds,
                         min_free_bytes=int(settings.min_free_mb * 1024 * 1024))
    # qdrant_client only here: importing it costs ~1.2 s, which an embedded store never pays.
    from qdrant_client import AsyncQdrantClient, QdrantClient

    from mmrag.store.client import QdrantClientStore

    if settings.qdrant_url == MEMORY_URL:
        # No async client: a second `:memory:` client would be a different, empty database.
        return QdrantClientStore(
            QdrantClient(location=MEMORY_URL),
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
        )
    kwargs = _client_kwargs(settings)
    return QdrantClientStore(
        QdrantClient(**kwargs),
        # the sync client already checked the server's version; one warning is enough
        async_client=AsyncQdrantClient(**kwargs, check_compatibility=False),
        shard_number=settings.shard_number,
        replication_factor=settings.replication_factor,
    )
