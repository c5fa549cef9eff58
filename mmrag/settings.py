"""Runtime settings. This is the only module that reads the environment or `.env`.

Everything else receives a `Settings` instance (or plain arguments) from its caller,
so library code and tests never depend on the process environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,  # `QDRANT_URL=` in .env means "unset", as .env.example shows
    )

    # --- where things live -------------------------------------------------
    home: Path = Field(
        default=Path(".mmrag"),
        validation_alias=AliasChoices("MMRAG_HOME", "home"),
        description="Data directory of the embedded store, locks and reports.",
    )
    collection: str = Field(
        default="mmrag", validation_alias=AliasChoices("MMRAG_COLLECTION", "collection")
    )

    # --- model --------------------------------------------------------------
    model: str = Field(
        default="clip-vit-b32",
        validation_alias=AliasChoices("MMRAG_MODEL", "model"),
        description="Registry name, HF model id, local directory, or cn_clip:NAME.",
    )
    device: str = Field(
        default="auto", validation_alias=AliasChoices("MMRAG_DEVICE", "device")
    )
    quantize: Literal["int8"] | None = Field(
        default=None, validation_alias=AliasChoices("MMRAG_QUANTIZE", "quantize")
    )
    fast_preprocess: bool = Field(
        default=True,
        validation_alias=AliasChoices("MMRAG_FAST_PREPROCESS", "fast_preprocess"),
        # On by default because its measured difference is negligible: embedding cosine to the
        # reference path min 0.99999 on 12-MP photos, 0.99994 on mixed images (bench/ingest.py).
        description="JPEG draft-mode decoding of large JPEGs before the exact resize.",
    )

    torch_threads: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("MMRAG_TORCH_THREADS", "torch_threads"),
        # 12-MP JPEGs on 2 idle cores: torch's default (2) gave 10.3 images/s end-to-end, 1 gave 7.9;
        # while other work loaded the machine, 1 thread held up better (8.0 against 4.3).
        description="CPU threads for the model; 0 keeps torch's default.",
    )

    # --- ingestion ----------------------------------------------------------
    batch_size: int = Field(default=32, ge=1, validation_alias=AliasChoices("MMRAG_BATCH_SIZE", "batch_size"))
    auto_batch: bool = Field(
        default=True, validation_alias=AliasChoices("MMRAG_AUTO_BATCH", "auto_batch"),
        # H100, ViT-B/32 fp16: 4,951 images/s at 32, 14,077 at 128, 15,052 at 256, 15,463 at 512.
        description="On a GPU, double the image batch from MMRAG_BATCH_SIZE while images/s grows >= 5% "
                    "and memory allows, once per model load. Out-of-memory always halves the batch.",
    )
    text_batch_size: int = Field(default=128, ge=1, validation_alias=AliasChoices("MMRAG_TEXT_BATCH_SIZE", "text_batch_size"))
    write_batch_size: int = Field(default=256, ge=1, validation_alias=AliasChoices("MMRAG_WRITE_BATCH_SIZE", "write_batch_size"))
    workers: int = Field(default=0, ge=0, validation_alias=AliasChoices("MMRAG_WORKERS", "workers"),
                         description="Decode workers; 0 picks one per CPU core.")
    decode_executor: Literal["auto", "thread", "process"] = Field(
        default="auto", validation_alias=AliasChoices("MMRAG_DECODE_EXECUTOR", "decode_executor"),
        # auto: processes when the model runs on a GPU (decode is then the bottleneck, and on a
        # 16-core H100 host 16 decode threads reached only ~3 cores' worth: the GIL), threads on
        # CPU, where decode shares the cores with the model anyway.
        description="Decode pool: thread, process, or auto (process on a GPU, thread on CPU).",
    )
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1, validation_alias=AliasChoices("MMRAG_MAX_FILE_BYTES", "max_file_bytes"))
    max_image_pixels: int = Field(default=89_478_485, ge=1, validation_alias=AliasChoices("MMRAG_MAX_IMAGE_PIXELS", "max_image_pixels"),
                                  description="Decompression-bomb limit (PIL's default).")

    # --- search -------------------------------------------------------------
    hnsw: bool = Field(default=False, validation_alias=AliasChoices("MMRAG_HNSW", "hnsw"),
                       description="Approximate search; exact search is the default.")
    hnsw_ef: int = Field(default=128, ge=1, validation_alias=AliasChoices("MMRAG_HNSW_EF", "hnsw_ef"))

    # --- hybrid search (issue 14) -------------------------------------------
    sparse_fields: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("MMRAG_SPARSE_FIELDS", "sparse_fields"),
        description="Manifest text fields indexed by BM25 beside the caption (JSON list, e.g. [\"tags\"]).")
    fusion: Literal["rrf", "dbsf"] = Field(default="rrf", validation_alias=AliasChoices("MMRAG_FUSION", "fusion"),
                                           description="Fusion of fused/hybrid searches: weighted RRF or DBSF.")
    sparse_weight: float = Field(default=3.0, gt=0, validation_alias=AliasChoices("MMRAG_SPARSE_WEIGHT", "sparse_weight"))
    dense_weight: float = Field(default=0.5, gt=0, validation_alias=AliasChoices("MMRAG_DENSE_WEIGHT", "dense_weight"))
    mmr_lambda: float = Field(default=0.5, ge=0, le=1, validation_alias=AliasChoices("MMRAG_MMR_LAMBDA", "mmr_lambda"))
    mmr_candidates: int = Field(default=50, ge=1, validation_alias=AliasChoices("MMRAG_MMR_CANDIDATES", "mmr_candidates"))
    min_relevance: float | None = Field(
        default=None, ge=0, le=100, validation_alias=AliasChoices("MMRAG_MIN_RELEVANCE", "min_relevance"),
        description="Percentile of the calibrated null distribution a hit must beat (see `mmrag calibrate`).")
    gate_margin: float = Field(
        default=0.0, ge=0, le=1, validation_alias=AliasChoices("MMRAG_GATE_MARGIN", "gate_margin"),
        description="reindex --rebuild --gate: how much lower the new recall@k may be than the live one.")

    # --- remote Qdrant ------------------------------------------------------
    qdrant_url: str | None = Field(default=None, validation_alias=AliasChoices("QDRANT_URL", "qdrant_url"))
    qdrant_api_key: str | None = Field(default=None, validation_alias=AliasChoices("QDRANT_API_KEY", "qdrant_api_key"))
    qdrant_prefer_grpc: bool = Field(default=False, validation_alias=AliasChoices("QDRANT_PREFER_GRPC", "qdrant_prefer_grpc"))
    qdrant_https: bool | None = Field(default=None, validation_alias=AliasChoices("QDRANT_HTTPS", "qdrant_https"))
    qdrant_timeout: float = Field(default=30.0, gt=0, validation_alias=AliasChoices("QDRANT_TIMEOUT", "qdrant_timeout"))
    shard_number: int | None = Field(default=None, ge=1, validation_alias=AliasChoices("MMRAG_SHARD_NUMBER", "shard_number"))
    replication_factor: int | None = Field(default=None, ge=1, validation_alias=AliasChoices("MMRAG_REPLICATION_FACTOR", "replication_factor"))

    # --- retries (remote store) ---------------------------------------------
    retry_attempts: int = Field(default=6, ge=1, validation_alias=AliasChoices("MMRAG_RETRY_ATTEMPTS", "retry_attempts"))
    retry_max_seconds: float = Field(default=60.0, gt=0, validation_alias=AliasChoices("MMRAG_RETRY_MAX_SECONDS", "retry_max_seconds"))
    retry_initial_seconds: float = Field(default=0.5, gt=0, validation_alias=AliasChoices("MMRAG_RETRY_INITIAL_SECONDS", "retry_initial_seconds"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the process environment and `./.env` (cached per process)."""
    return Settings()
