"""Tasks on embeddings: zero-shot classification and its prompt templates, tagging,
similarity, near-duplicates, evaluation (with its metrics) and result plots."""
