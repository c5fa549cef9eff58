"""qdrant-client's `models`, imported on first attribute access.

`import qdrant_client` takes about 1.2 s (it builds hundreds of pydantic models), which
is most of a cold `mmrag search`. Modules that speak qdrant-client's filter and point
models import `models` from here, so a query without a filter never pays for it; a
filter object exists only once qdrant_client is imported, so converting one is free.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdrant_client import models as models
else:

    class _LazyModels:
        def __getattr__(self, name: str) -> Any:  # only for names not looked up before
            from qdrant_client import models as real

            value = getattr(real, name)
            setattr(self, name, value)  # a filter converted per query pays the import lookup once
            return value

        def __repr__(self) -> str:
            return "<qdrant_client.models, imported on first use>"

    models = _LazyModels()



def is_model(value: Any, name: str) -> bool:
    """isinstance(value, qdrant_client.models.<name>), without importing qdrant_client: a
    value can only be one of its models once the caller has imported it."""
    module = sys.modules.get("qdrant_client.http.models.models")
    return module is not None and isinstance(value, getattr(module, name))


__all__ = ["is_model", "models"]
