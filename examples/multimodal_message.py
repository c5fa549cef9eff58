"""Build the message for a multimodal chat model: the question plus the retrieved images.

    docs = retriever.invoke("a red car", include_image="data_uri")
    message = build_multimodal_message("What colour is the car?", docs)
    answer = chat_model.invoke([message])   # any model that accepts image content blocks

Each image becomes a LangChain standard image content block, with its caption
and path as text beside it so the model can cite what it saw.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage

from mmrag.retrieval import image_content_block


def build_multimodal_message(question: str, docs: Sequence[Document]) -> HumanMessage:
    blocks: list[dict] = [{"type": "text", "text": question}]
    for i, doc in enumerate(docs, 1):
        blocks.append({"type": "text", "text": f"[{i}] {doc.metadata.get('path')}: {doc.page_content}"})
        blocks.append(image_content_block(doc))
    return HumanMessage(content=blocks)
