"""`RemoteMultimodalRetriever`: the retriever over `mmrag serve`'s HTTP API, sync (httpx.Client) and async.

It returns the same Documents as `MultimodalRetriever` in the server's process: page_content is the
caption (or the path's description) and metadata holds id, score, vector, path, width, height, payload.
Text queries only: images stay with the caller (use `search_image` for bytes).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from mmrag.errors import NotFoundError, RunFailed, UsageError

_ARGS = {"k", "target", "score_threshold", "filter"}


def _document(hit: dict[str, Any]) -> Document:
    metadata = {key: hit.get(key) for key in ("id", "score", "vector", "path", "width", "height", "payload")}
    return Document(id=hit["id"], page_content=hit["page_content"], metadata=metadata)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:200]
    message = f"mmrag server answered {response.status_code}: {detail}"
    if response.status_code == 404:
        raise NotFoundError(message)
    if 400 <= response.status_code < 500:
        raise UsageError(message)
    raise RunFailed(message)


class RemoteMultimodalRetriever(BaseRetriever):
    """Top-k hits from a running `mmrag serve` as LangChain Documents."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: str = Field(description="base URL of the server, e.g. http://127.0.0.1:8000")
    api_key: SecretStr | None = None
    k: int = 4
    target: str = "image"
    score_threshold: float | None = None
    filter: dict[str, Any] | None = None
    timeout: float = 30.0

    _client: httpx.Client | None = PrivateAttr(default=None)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"} if self.api_key else {}

    def _body(self, query: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - _ARGS
        if unknown:
            raise TypeError(f"unknown retriever arguments: {sorted(unknown)}")
        return {
            "query": query,
            "k": kwargs.get("k", self.k),
            "target": kwargs.get("target", self.target),
            "score_threshold": kwargs.get("score_threshold", self.score_threshold),
            "filter": kwargs.get("filter", self.filter),
        }

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=self.timeout, headers=self._headers())
        return self._client

    def _post(self, path: str, body: dict[str, Any]) -> list[Document]:
        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as e:
            raise RunFailed(f"mmrag server at {self.url} unreachable: {type(e).__name__}: {e}") from e
        _raise_for(response)
        return [_document(h) for h in response.json()["hits"]]

    async def _apost(self, path: str, body: dict[str, Any]) -> list[Document]:
        # One AsyncClient per call: it is bound to the running event loop, which may differ per call.
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, headers=self._headers()) as client:
            try:
                response = await client.post(path, json=body)
            except httpx.HTTPError as e:
                raise RunFailed(f"mmrag server at {self.url} unreachable: {type(e).__name__}: {e}") from e
        _raise_for(response)
        return [_document(h) for h in response.json()["hits"]]

    def search_image(self, image: bytes, **kwargs: Any) -> list[Document]:
        body = self._body("-", kwargs)
        body.pop("query")
        body["image_base64"] = base64.b64encode(image).decode("ascii")
        return self._post("/api/search/image", body)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any) -> list[Document]:
        return self._post("/api/search", self._body(query, kwargs))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await self._apost("/api/search", self._body(query, kwargs))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


__all__ = ["RemoteMultimodalRetriever"]
