"""A tool-calling agent that searches an mmrag collection.

The retriever becomes a LangChain tool (`create_retriever_tool`, with the
Documents as the tool's artifact); any chat model that supports tool calling
drives the loop. Run it against your own collection:

    python examples/agent_retriever.py "which pictures show a red car?" --collection photos

With a real chat model, pass it as `chat_model` to `run_agent`; the test in
tests/pipeline/test_agents.py drives the same loop with a scripted fake model.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, create_retriever_tool


def make_image_search_tool(retriever: Any) -> BaseTool:
    return create_retriever_tool(
        retriever,
        name="search_images",
        description="Search the image collection with a text description; returns matching images with captions.",
        response_format="content_and_artifact",
    )


def run_agent(chat_model: Any, tools: Sequence[BaseTool], question: str, *, max_steps: int = 5) -> tuple[AIMessage, list[Document]]:
    """Minimal tool-calling loop: returns the final answer and every Document the tools returned."""
    by_name = {t.name: t for t in tools}
    model = chat_model.bind_tools(list(tools))
    messages: list[BaseMessage] = [
        SystemMessage("Answer questions about the user's images. Use search_images to find them."),
        HumanMessage(question),
    ]
    found: list[Document] = []
    for _ in range(max_steps):
        ai = model.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            return ai, found
        for call in ai.tool_calls:
            result: ToolMessage = by_name[call["name"]].invoke(call)
            found.extend(result.artifact or [])
            messages.append(result)
    raise RuntimeError(f"no final answer after {max_steps} steps")


def main() -> None:  # pragma: no cover - needs a real chat model
    from mmrag.app import App
    from mmrag.retrieval import MultimodalRetriever

    parser = argparse.ArgumentParser()
    parser.add_argument("question")
    parser.add_argument("--collection", default=None)
    args = parser.parse_args()
    app = App()
    collection = args.collection or app.settings.collection
    retriever = MultimodalRetriever(store=app.store, embedder=app.embedder(collection=collection), collection=collection, k=4)
    tool = make_image_search_tool(retriever)
    # Plug in your chat model here: run_agent(chat_model, [tool], args.question).
    # Without one, show what the agent's tool returns for the question.
    print(tool.invoke({"query": args.question}))

if __name__ == "__main__":  # pragma: no cover
    main()
