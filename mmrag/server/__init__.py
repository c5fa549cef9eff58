"""`mmrag serve`: the HTTP API, the web search page and the MCP tools over one `SearchService`."""

from mmrag.server.api import create_app

__all__ = ["create_app"]
