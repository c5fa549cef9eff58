"""MCP tools through the SDK's own client (stdio and streamable HTTP), and the retriever over HTTP."""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests
from mcp import Client, StdioServerParameters

from mmrag.retrieval import MultimodalRetriever
from mmrag.retrieval.remote import RemoteMultimodalRetriever
from mmrag.store.convert import point_id
from server.conftest import COLLECTION, first_blue_triangle

TOOLS = {"search_text", "search_image", "similar", "classify", "get_image"}


async def _exercise(client, world) -> None:
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} == TOOLS
    path = first_blue_triangle(world["rows"])
    data = base64.b64encode((world["root"] / path).read_bytes()).decode()

    res = await client.call_tool("search_text", {"query": "a photo of a blue triangle.", "k": 2})
    assert not res.is_error, res
    kinds = [c.type for c in res.content]
    assert kinds == ["text", "image", "text", "image"]
    first = json.loads(res.content[0].text.split(" ", 1)[1])
    assert world["rows"][first["path"]]["shape"] == "triangle"
    assert res.content[1].mime_type == "image/jpeg" and base64.b64decode(res.content[1].data)[:2] == b"\xff\xd8"

    res = await client.call_tool("search_image", {"image_base64": data, "k": 1})
    assert json.loads(res.content[0].text.split(" ", 1)[1])["path"] == path and res.content[1].type == "image"

    res = await client.call_tool("similar", {"point_id": point_id(path), "k": 3})
    assert [c.type for c in res.content] == ["text", "image"] * 3

    res = await client.call_tool("classify", {"image_base64": data, "labels": ["circle", "triangle", "star"]})
    assert json.loads(res.content[0].text)[0]["label"] == "triangle"

    res = await client.call_tool("get_image", {"point_id": point_id(path), "size": 64})
    assert json.loads(res.content[0].text)["path"] == path and res.content[1].type == "image"

    bad = await client.call_tool("similar", {"point_id": "../../etc/passwd"})
    assert bad.is_error and "point ids are UUIDs" in bad.content[0].text


async def test_mcp_over_streamable_http(server, world):
    async with Client(f"{server.url}/mcp") as client:
        await _exercise(client, world)


@pytest.mark.slow
async def test_mcp_over_stdio(world):
    env = {**os.environ, "MMRAG_HOME": str(world["home"]), "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    # The stdio server is another process: it needs the shard this process holds, so hand it over.
    world["store"].close()
    params = StdioServerParameters(command=sys.executable, args=["-m", "mmrag", "mcp", "--collection", COLLECTION], env=env)
    async with Client(params, read_timeout_seconds=120) as client:
        await _exercise(client, world)
    # this process's server reopens the shard on its next request (EdgeStore opens lazily)


def test_remote_documents_equal_in_process_documents(server, world):
    local = MultimodalRetriever(store=world["store"], embedder=world["emb"], collection=COLLECTION, k=4)
    remote = RemoteMultimodalRetriever(url=server.url, k=4)
    for target in ("image", "text", "fused"):
        want = local.invoke("a green star", target=target)
        got = remote.invoke("a green star", target=target)
        assert [(d.id, d.page_content, d.metadata) for d in got] == [(d.id, d.page_content, d.metadata) for d in want]


async def test_remote_async_equals_sync(server):
    remote = RemoteMultimodalRetriever(url=server.url, k=3, filter={"color": "red"})
    sync_docs = remote.invoke("a circle")
    async_docs = await remote.ainvoke("a circle")
    assert [d.id for d in async_docs] == [d.id for d in sync_docs] and {d.metadata["payload"]["color"] for d in sync_docs} == {"red"}


def test_remote_errors_are_mmrag_errors(server, keyed_server):
    from mmrag.errors import RunFailed, UsageError

    with pytest.raises(UsageError, match="target must be one of"):
        RemoteMultimodalRetriever(url=server.url, target="nope").invoke("x")
    with pytest.raises(UsageError, match="401: missing API key"):
        RemoteMultimodalRetriever(url=keyed_server.url).invoke("x")
    from server.conftest import API_KEY

    assert len(RemoteMultimodalRetriever(url=keyed_server.url, api_key=API_KEY, k=2).invoke("x")) == 2
    with pytest.raises(RunFailed, match="unreachable"):
        RemoteMultimodalRetriever(url="http://127.0.0.1:9", timeout=2).invoke("x")


class TestRemoteRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _params(self, server):
        type(self).params = {"url": server.url}

    @property
    def retriever_constructor(self) -> type[RemoteMultimodalRetriever]:
        return RemoteMultimodalRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return self.params

    @property
    def retriever_query_example(self) -> str:
        return "a red circle"
