"""A LangChain agent that searches an mmrag collection and sees the pictures it finds.

The agent is LangChain's own (`langchain.agents.create_agent`); the retriever is its tool. The
tool answers with `response_format="content_and_artifact"`: the content the model reads is a
list of standard content blocks, one text block per hit (rank, path, score, caption) followed by
the hit's image as an image block, and the artifact is the list of Documents for your code.
A multimodal chat model therefore looks at the retrieved images, not only at their captions.

    python examples/agent_retriever.py "which pictures show a red car?" --collection photos \
        --model anthropic:claude-sonnet-4-5      # any tool-calling chat model init_chat_model knows

Images inside a tool result need a provider that accepts them there (Anthropic and Gemini do;
OpenAI's chat API takes images in user messages only: send them with
examples/multimodal_message.py instead). Without --model the script prints what the tool returns.
The test in tests/pipeline/test_agents.py drives the same agent with a scripted fake model.
"""

from __future__ import annotations

import argparse
from typing import Any

from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

from mmrag.retrieval import image_content_block

SYSTEM_PROMPT = (
    "Answer questions about the user's images. Use search_images to find them; "
    "cite the paths of the images you relied on."
)


def hit_blocks(docs: list[Document]) -> list[dict[str, Any]]:
    """Content blocks for the model: per hit, a text line then its image."""
    if not docs:
        return [{"type": "text", "text": "No matching images."}]
    blocks: list[dict[str, Any]] = []
    for i, doc in enumerate(docs, 1):
        score = doc.metadata.get("score")
        scored = f" (score {score:.3f})" if score is not None else ""
        blocks.append({"type": "text", "text": f"[{i}] {doc.metadata.get('path')}{scored}: {doc.page_content}"})
        blocks.append(image_content_block(doc))
    return blocks


def make_image_search_tool(retriever: Any) -> BaseTool:
    """The retriever as a tool: images as content blocks for the model, Documents as the artifact."""

    @tool("search_images", response_format="content_and_artifact")
    def search_images(query: str) -> tuple[list[dict[str, Any]], list[Document]]:
        """Search the image collection with a text description; returns the matching images with their paths and captions."""
        # "path" rather than "data_uri": the file is read once, straight into the image block
        docs = retriever.invoke(query, include_image="path")
        return hit_blocks(docs), docs

    return search_images


def build_agent(chat_model: Any, retriever: Any):
    """A LangGraph agent (create_agent) with the image search as its only tool."""
    return create_agent(chat_model, tools=[make_image_search_tool(retriever)], system_prompt=SYSTEM_PROMPT)


def run_agent(agent: Any, question: str) -> tuple[AIMessage, list[Document]]:
    """Ask `question`; returns the final answer and every Document the tool returned, in order."""
    state = agent.invoke({"messages": [{"role": "user", "content": question}]})
    messages = state["messages"]
    found = [d for m in messages if isinstance(m, ToolMessage) for d in (m.artifact or [])]
    return messages[-1], found


def main() -> None:  # pragma: no cover - needs a real chat model
    from mmrag.app import App
    from mmrag.retrieval import MultimodalRetriever

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--collection", default=None, help="collection to search (default: MMRAG_COLLECTION)")
    parser.add_argument("--model", default=None, help="chat model for init_chat_model, e.g. anthropic:claude-sonnet-4-5")
    parser.add_argument("-k", type=int, default=4, help="hits per search (default: 4)")
    args = parser.parse_args()
    app = App()
    collection = args.collection or app.settings.collection
    retriever = MultimodalRetriever(
        store=app.store, embedder=app.embedder(collection=collection), collection=collection, k=args.k
    )
    if args.model is None:
        tool_ = make_image_search_tool(retriever)
        result = tool_.invoke({"type": "tool_call", "name": tool_.name, "id": "cli", "args": {"query": args.question}})
        for doc in result.artifact:
            print(f"{doc.metadata['score']:.3f}  {doc.metadata['path']}  {doc.page_content}")
        return
    from langchain.chat_models import init_chat_model

    answer, docs = run_agent(build_agent(init_chat_model(args.model), retriever), args.question)
    print(answer.text)
    print("retrieved:", ", ".join(d.metadata["path"] for d in docs))


if __name__ == "__main__":  # pragma: no cover
    main()
