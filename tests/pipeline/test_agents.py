"""Agent use: the retriever as a tool in a tool-calling loop, and a multimodal message."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from mmrag.ingest import run_ingest
from mmrag.retrieval import MultimodalRetriever
from pipeline.conftest import write_corpus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class ScriptedToolModel(GenericFakeChatModel):
    """A fake chat model that replays scripted messages and records what it was shown."""

    seen: list = []

    def bind_tools(self, tools, **kwargs):
        self.seen.append([t.name for t in tools])
        return self


@pytest.fixture
def retriever(store, tiny_embedder, tmp_path):
    root = write_corpus(tmp_path / "corpus")
    run_ingest(store, tiny_embedder, root=root, collection="photos", progress=False)
    return MultimodalRetriever(store=store, embedder=tiny_embedder, collection="photos", k=2)


def test_tool_calling_agent_gets_documents_back(retriever):
    agent = _load_example("agent_retriever")
    tool = agent.make_image_search_tool(retriever)
    script = iter([
        AIMessage(content="", tool_calls=[{"name": "search_images", "args": {"query": "a red picture"}, "id": "call-1"}]),
        AIMessage(content="The red picture is red.png."),
    ])
    model = ScriptedToolModel(messages=script)
    answer, docs = agent.run_agent(model, [tool], "Where is the red picture?")

    assert answer.content == "The red picture is red.png."
    assert model.seen[-1] == ["search_images"]
    expected = retriever.invoke("a red picture")
    assert [d.metadata["id"] for d in docs] == [d.metadata["id"] for d in expected]
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 2


def test_as_tool_returns_documents(retriever):
    tool = retriever.as_tool(name="images", description="search images")
    docs = tool.invoke({"input": "a green photo"})
    assert [d.metadata["id"] for d in docs] == [d.metadata["id"] for d in retriever.invoke("a green photo")]


def test_multimodal_message_structure(retriever, tmp_path):
    example = _load_example("multimodal_message")
    docs = retriever.invoke("a red picture", include_image="data_uri")
    msg = example.build_multimodal_message("What colour is it?", docs)

    assert isinstance(msg, HumanMessage)
    blocks = msg.content
    assert blocks[0] == {"type": "text", "text": "What colour is it?"}
    assert len(blocks) == 1 + 2 * len(docs)
    for i, doc in enumerate(docs):
        text, image = blocks[1 + 2 * i], blocks[2 + 2 * i]
        assert text["type"] == "text" and doc.metadata["path"] in text["text"]
        assert image["type"] == "image"
        payload = image.get("base64") or image.get("data")
        if payload is None:  # url form
            payload = image["url"].split(",", 1)[1]
        root = Path(retriever.store.get_spec("photos").extra["corpus_root"])
        assert base64.b64decode(payload) == (root / doc.metadata["path"]).read_bytes()
        assert image.get("mime_type", "image/png").startswith("image/")
