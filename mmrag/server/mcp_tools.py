"""MCP tools over a `SearchService`: hits come back as text plus thumbnails, so a multimodal model sees them.

`mmrag mcp` serves them over stdio; `mmrag serve` mounts the same server under /mcp (streamable HTTP).
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent

from mmrag.errors import MmragError
from mmrag.service import SearchService, hit_dict

THUMBNAIL_SIZE = 192


def _hit_blocks(service: SearchService, docs: list, *, images: bool) -> list[TextContent | ImageContent]:
    if not docs:
        return [TextContent(type="text", text="no hits")]
    blocks: list[TextContent | ImageContent] = []
    for rank, doc in enumerate(docs, 1):
        hit = hit_dict(doc)
        summary = {k: hit[k] for k in ("id", "score", "path", "caption", "width", "height")}
        blocks.append(TextContent(type="text", text=f"#{rank} " + json.dumps(summary, ensure_ascii=False)))
        if images:
            try:
                data = service.thumbnail(hit["id"], THUMBNAIL_SIZE)
            except Exception as e:  # a missing file must not hide the other hits
                blocks.append(TextContent(type="text", text=f"(no image: {e})"))
                continue
            blocks.append(ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type="image/jpeg"))
    return blocks


def _image_bytes(image_base64: str) -> bytes:
    from mmrag.retrieval.queries import decode_base64_image

    return decode_base64_image(image_base64)


def _tool_errors(fn: Any) -> Any:
    """Our errors reach the agent as the tool's error text (the SDK hides other exceptions' messages)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MmragError as e:
            raise ToolError(str(e)) from e

    return wrapper


def build_mcp(service: SearchService) -> MCPServer:
    server: MCPServer[Any] = MCPServer(
        "mmrag",
        instructions=f"Search the image collection {service.collection!r} by text or by image, find similar images, "
                     "classify an image zero-shot, and fetch images by point id.",
    )

    @server.tool()
    @_tool_errors
    def search_text(query: str, k: int = 5, target: str = "image", filter: dict[str, Any] | None = None,
                    images: bool = True) -> list[TextContent | ImageContent]:
        """Find images matching a text query (any language the model knows). target: image, text (captions) or fused.
        filter: payload filter like {"format": "PNG"}. Returns each hit as JSON text plus its thumbnail."""
        return _hit_blocks(service, service.search_text(query, k=k, target=target, filter=filter), images=images)

    @server.tool()
    @_tool_errors
    def search_image(image_base64: str, k: int = 5, target: str = "image", filter: dict[str, Any] | None = None,
                     images: bool = True) -> list[TextContent | ImageContent]:
        """Find images similar to a given image (base64 or a data: URI)."""
        docs = service.search_image(_image_bytes(image_base64), k=k, target=target, filter=filter)
        return _hit_blocks(service, docs, images=images)

    @server.tool()
    @_tool_errors
    def similar(point_id: str, k: int = 5, images: bool = True) -> list[TextContent | ImageContent]:
        """More like this: images nearest to the stored image with this point id (itself excluded)."""
        return _hit_blocks(service, service.similar(point_id, k=k), images=images)

    @server.tool()
    @_tool_errors
    def classify(image_base64: str, labels: list[str], top_k: int = 5) -> str:
        """Zero-shot classification of an image against the given labels: label probabilities, best first."""
        top = service.classify(_image_bytes(image_base64), labels, top_k=top_k)
        return json.dumps([{"label": label, "probability": round(p, 6)} for label, p in top], ensure_ascii=False)

    @server.tool()
    @_tool_errors
    def get_image(point_id: str, size: int = 512) -> list[TextContent | ImageContent]:
        """The stored image of a point id (as a JPEG of at most size x size pixels) with its metadata."""
        doc = service.get(point_id)
        data = service.thumbnail(point_id, size)
        hit = hit_dict(doc)
        summary = {k: hit[k] for k in ("id", "path", "caption", "width", "height")}
        return [TextContent(type="text", text=json.dumps(summary, ensure_ascii=False)),
                ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type="image/jpeg")]

    return server
