"""Agent use: the retriever as a tool in a tool-calling loop, and a multimodal message."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from pydantic import Field

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
    """A fake tool-calling chat model: replays scripted messages and records what it was shown."""

    bound: list[str] = Field(default_factory=list)
    inputs: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools, **kwargs):
        self.bound = [t.name for t in tools]
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.inputs.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


@pytest.fixture
def retriever(store, tiny_embedder, tmp_path):
    root = write_corpus(tmp_path / "corpus")
    run_ingest(store, tiny_embedder, root=root, collection="photos", progress=False)
    return MultimodalRetriever(store=store, embedder=tiny_embedder, collection="photos", k=2)


def test_create_agent_shows_the_model_the_retrieved_images(retriever):
    agent_example = _load_example("agent_retriever")
    script = iter([
        AIMessage(content="", tool_calls=[{"name": "search_images", "args": {"query": "a red picture"}, "id": "call-1"}]),
        AIMessage(content="The red picture is red.png."),
    ])
    model = ScriptedToolModel(messages=script)
    agent = agent_example.build_agent(model, retriever)
    answer, docs = agent_example.run_agent(agent, "Where is the red picture?")

    assert answer.content == "The red picture is red.png."
    assert model.bound == ["search_images"]
    expected = retriever.invoke("a red picture")
    assert [d.metadata["id"] for d in docs] == [d.metadata["id"] for d in expected] and len(docs) == 2

    # The model's second turn sees the tool's answer: per hit a text line, then the image itself.
    assert len(model.inputs) == 2
    result = model.inputs[1][-1]
    assert isinstance(result, ToolMessage) and result.tool_call_id == "call-1"
    texts = [b for b in result.content if b["type"] == "text"]
    images = [b for b in result.content if b["type"] == "image"]
    assert [b["type"] for b in result.content] == ["text", "image"] * len(expected)
    root = Path(retriever.store.get_spec("photos").extra["corpus_root"])
    for i, (doc, text, image) in enumerate(zip(expected, texts, images, strict=True), 1):
        path = doc.metadata["path"]
        assert text["text"] == f"[{i}] {path} (score {doc.metadata['score']:.3f}): {doc.page_content}"
        assert image["mime_type"] == "image/png"
        assert base64.b64decode(image["base64"]) == (root / path).read_bytes()


def test_image_search_tool_with_no_hits_says_so(retriever):
    agent_example = _load_example("agent_retriever")
    strict = retriever.model_copy(update={"score_threshold": 1.01})
    tool = agent_example.make_image_search_tool(strict)
    result = tool.invoke({"type": "tool_call", "name": "search_images", "id": "c", "args": {"query": "a red picture"}})
    assert result.content == [{"type": "text", "text": "No matching images."}]
    assert result.artifact == []


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
