"""The FastAPI app: JSON API under /api, the search page at /, MCP under /mcp, health and metrics.

Handlers are thin: each parses its request into one `SearchService` call. Errors are
`MmragError`s mapped to their `http_status`; bad input is a 4xx with a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from mmrag.errors import MmragError, NotFoundError, UsageError
from mmrag.retrieval.queries import decode_base64_image
from mmrag.server.metrics import Metrics, MetricsMiddleware
from mmrag.server.security import ApiKeyMiddleware, BodyLimitMiddleware
from mmrag.service import SearchService, collections, hit_dict, targets

log = logging.getLogger(__name__)

API = "/api"


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000, description="text query (never read as a file path)")
    k: int = Field(default=12, ge=1, le=1000)
    target: str = Field(default="image", description="image | text | fused (| hybrid when available)")
    filter: dict[str, Any] | None = Field(default=None, description="payload filter, in the retriever's dict form")
    score_threshold: float | None = None


class ImageSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(description="the image, base64 (a data: URI prefix is accepted)")
    k: int = Field(default=12, ge=1, le=1000)
    target: str = "image"
    filter: dict[str, Any] | None = None
    score_threshold: float | None = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_base64: str
    labels: list[str] = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=1000)


def _filter_form(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"filter must be a JSON object: {e}") from e
    if not isinstance(value, dict):
        raise UsageError("filter must be a JSON object like {\"tags\": \"cat\"}")
    return value


def _hits(service: SearchService, docs: list, *, query: Any = None, target: str | None = None) -> dict[str, Any]:
    return {
        "collection": service.collection,
        "query": query,
        "target": target,
        "hits": [hit_dict(d, thumbnail_url=f"{API}/points/{d.metadata['id']}/thumbnail",
                          image_url=f"{API}/points/{d.metadata['id']}/image") for d in docs],
    }


def static_dir() -> Any:
    return resources.files("mmrag.server") / "static"


def create_app(
    app: Any = None,
    *,
    service: SearchService | None = None,
    collection: str | None = None,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    max_body_bytes: int | None = None,
    mcp: bool = True,
) -> FastAPI:
    """The ASGI app over `app` (an `mmrag.app.App`) or a ready `service`.

    Settings come from `app.settings` unless given here: MMRAG_API_KEY, MMRAG_CORS_ORIGINS, MMRAG_UPLOAD_MAX_BYTES.
    """
    if service is None:
        if app is None:
            raise ValueError("create_app needs an App or a SearchService")
        service = SearchService.from_app(app, collection)
    settings = getattr(app, "settings", None)
    if api_key is None and settings is not None:
        api_key = settings.api_key
    if cors_origins is None:
        cors_origins = list(settings.cors_origins) if settings is not None else []
    if max_body_bytes is None:
        # an upload is base64 in JSON (4/3) or multipart (a little framing) at most
        max_body_bytes = service.limits.max_bytes * 4 // 3 + 64 * 1024

    mcp_server = None
    if mcp:
        from mmrag.server.mcp_tools import build_mcp

        mcp_server = build_mcp(service)
        mcp_app = mcp_server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if mcp_server is None:
            yield
            return
        async with mcp_server.session_manager.run():
            yield

    api = FastAPI(title="mmrag", version="0.1.0", lifespan=lifespan,
                  description="Multimodal search over an mmrag collection: text, image, more-like-this, zero-shot.")
    api.state.service = service
    metrics = Metrics()
    api.state.metrics = metrics

    @api.exception_handler(MmragError)
    async def mmrag_error(_: Request, exc: MmragError) -> JSONResponse:
        status = exc.http_status if 400 <= exc.http_status < 600 else 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @api.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        # The library's own argument checks (a filter operator, an unindexed facet, ...) raise
        # ValueError: the request was wrong, so it is a 400 with the message, never a 500.
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # --- health ------------------------------------------------------------------------------
    @api.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        try:
            return JSONResponse({"status": "ready", **service.ready()})
        except MmragError as e:
            return JSONResponse({"status": "not ready", "detail": str(e)}, status_code=503)
        except Exception as e:  # the store itself is down
            return JSONResponse({"status": "not ready", "detail": f"{type(e).__name__}: {e}"}, status_code=503)

    @api.get("/metrics", tags=["health"], include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # --- info --------------------------------------------------------------------------------
    @api.get(f"{API}/config", tags=["info"])
    def config() -> dict[str, Any]:
        """What the search page needs: the collection, its targets and the filter fields."""
        return {"collection": service.collection, "targets": list(targets()), "facet_fields": service.facet_keys(),
                "max_upload_bytes": service.limits.max_bytes, "auth": api_key is not None}

    @api.get(f"{API}/collections", tags=["info"])
    def list_collections() -> list[dict[str, Any]]:
        return collections(service.store)

    @api.get(f"{API}/facets", tags=["info"])
    def facets(key: Annotated[list[str] | None, Query()] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        return {"collection": service.collection, "facets": service.facets(key, limit=limit)}

    # --- search ------------------------------------------------------------------------------
    @api.post(f"{API}/search", tags=["search"])
    def search(req: SearchRequest) -> dict[str, Any]:
        docs = service.search_text(req.query, k=req.k, target=req.target, filter=req.filter,
                                   score_threshold=req.score_threshold)
        return _hits(service, docs, query=req.query, target=req.target)

    @api.post(f"{API}/search/image", tags=["search"])
    def search_image(req: ImageSearchRequest) -> dict[str, Any]:
        docs = service.search_image(decode_base64_image(req.image_base64), k=req.k, target=req.target, filter=req.filter,
                                    score_threshold=req.score_threshold)
        return _hits(service, docs, target=req.target)

    @api.post(f"{API}/search/upload", tags=["search"])
    def search_upload(
        file: Annotated[UploadFile, File(description="the query image")],
        k: Annotated[int, Form(ge=1, le=1000)] = 12,
        target: Annotated[str, Form()] = "image",
        filter: Annotated[str | None, Form(description="JSON object")] = None,
        score_threshold: Annotated[float | None, Form()] = None,
    ) -> dict[str, Any]:
        data = file.file.read(service.limits.max_bytes + 1)
        docs = service.search_image(data, k=k, target=target, filter=_filter_form(filter), score_threshold=score_threshold)
        return _hits(service, docs, target=target)

    @api.get(f"{API}/points/{{point_id}}", tags=["points"])
    def get_point(point_id: str) -> dict[str, Any]:
        return _hits(service, [service.get(point_id)])["hits"][0]

    @api.get(f"{API}/points/{{point_id}}/similar", tags=["search"])
    def similar(point_id: str, k: Annotated[int, Query(ge=1, le=1000)] = 12, target: str = "image",
                filter: str | None = None) -> dict[str, Any]:
        return _hits(service, service.similar(point_id, k=k, target=target, filter=_filter_form(filter)), target=target)

    @api.get(f"{API}/points/{{point_id}}/image", tags=["points"])
    def image(point_id: str) -> FileResponse:
        file, mime = service.image_file(point_id)
        return FileResponse(file, media_type=mime, headers={"Cache-Control": "private, max-age=3600"})

    @api.get(f"{API}/points/{{point_id}}/thumbnail", tags=["points"])
    def thumbnail(point_id: str, size: Annotated[int, Query(ge=16, le=1024)] = 256) -> Response:
        return Response(service.thumbnail(point_id, size), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    # --- classification ----------------------------------------------------------------------
    @api.post(f"{API}/classify", tags=["classify"])
    def classify(req: ClassifyRequest) -> dict[str, Any]:
        top = service.classify(decode_base64_image(req.image_base64), req.labels, top_k=req.top_k)
        return {"labels": [{"label": label, "probability": p} for label, p in top]}

    @api.post(f"{API}/classify/upload", tags=["classify"])
    def classify_upload(file: Annotated[UploadFile, File()], labels: Annotated[str, Form(description="comma-separated")],
                        top_k: Annotated[int, Form(ge=1, le=1000)] = 5) -> dict[str, Any]:
        top = service.classify(file.file.read(service.limits.max_bytes + 1), labels.split(","), top_k=top_k)
        return {"labels": [{"label": label, "probability": p} for label, p in top]}

    # --- the page ----------------------------------------------------------------------------
    static = static_dir()

    @api.get("/", include_in_schema=False)
    def index() -> Response:
        return Response((static / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @api.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    api.mount("/static", StaticFiles(directory=str(static)), name="static")
    if mcp_server is not None:
        # Last route: it answers /mcp itself (streamable_http_path) and 404s everything unmatched.
        api.mount("", mcp_app)

    @api.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    # Outermost first: metrics see every answer, then the body limit, then the key.
    api.add_middleware(ApiKeyMiddleware, api_key=api_key)
    api.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if cors_origins:
        api.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    api.add_middleware(MetricsMiddleware, metrics=metrics)
    return api
