"""The ingest side: corpus reader → decode pool → embedder → store writer.

`run_ingest` wires the stages (`mmrag.ingest.run`); `state` decides what is already
indexed and unchanged, `writer` batches upserts on a background thread.
"""

from __future__ import annotations

from mmrag.ingest.run import IngestOptions, IngestReport, check_corpus, decode_plan, ensure_collection, run_ingest
from mmrag.ingest.state import load_state

__all__ = ["IngestOptions", "IngestReport", "check_corpus", "decode_plan", "ensure_collection", "load_state", "run_ingest"]
