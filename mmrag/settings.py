"""Runtime settings. This is the only module that reads the environment or `.env`.

Everything else receives a `Settings` instance (or plain arguments) from its caller,
so library code and tests never depend on the process environment.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        # Every setting is MMRAG_<NAME>: bare names would match HOME, MODEL, DEVICE, ... of the
        # user's shell (pydantic-settings ignores case). Only the QDRANT_* names keep an alias.
        env_prefix="MMRAG_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,  # `QDRANT_URL=` in .env means "unset", as .env.example shows
    )

    # --- where things live -------------------------------------------------
    home: Path = Field(
        default=Path(".mmrag"),
        description="Data directory of the embedded store, locks and reports.",
    )
    collection: str = Field(
        default="mmrag"
    )

    # --- model --------------------------------------------------------------
    model: str = Field(
        default="clip-vit-b32",
        description="Registry name, HF model id, local directory, or cn_clip:NAME.",
    )
    device: str = Field(
        default="auto"
    )
    quantize: Literal["int8"] | None = Field(
        default=None
    )
    fast_preprocess: bool = Field(
        default=True,
        # On by default because its measured difference is negligible: embedding cosine to the
        # reference path min 0.99999 on 12-MP photos, 0.99994 on mixed images (bench/ingest.py).
        description="JPEG draft-mode decoding of large JPEGs before the exact resize.",
    )

    backend: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        # auto = ONNX Runtime on CPU (measured faster, see README "ONNX Runtime backend"), torch on a GPU.
        description="What runs the model: auto, torch or onnx. int8 always runs through ONNX Runtime.",
    )
    model_threads: int = Field(
        default=0, ge=0,
        description="CPU threads for the model (torch or ONNX Runtime); 0 = MMRAG_TORCH_THREADS, then the runtime's default.",
    )
    torch_threads: int = Field(
        default=0, ge=0,
        # 12-MP JPEGs on 2 idle cores: torch's default (2) gave 10.3 images/s end-to-end, 1 gave 7.9;
        # while other work loaded the machine, 1 thread held up better (8.0 against 4.3).
        description="Old name of MMRAG_MODEL_THREADS, used when that is 0.",
    )

    # --- ingestion ----------------------------------------------------------
    batch_size: int = Field(default=32, ge=1)
    auto_batch: bool = Field(
        default=True,
        # H100, ViT-B/32 fp16: 4,951 images/s at 32, 14,077 at 128, 15,052 at 256, 15,463 at 512.
        description="On a GPU, double the image batch from MMRAG_BATCH_SIZE while images/s grows >= 5% "
                    "and memory allows, once per model load. Out-of-memory always halves the batch.",
    )
    text_batch_size: int = Field(default=128, ge=1)
    write_batch_size: int = Field(default=256, ge=1)
    workers: int = Field(default=0, ge=0,
                         description="Decode workers; 0 picks one per CPU core.")
    decode_executor: Literal["auto", "thread", "process"] = Field(
        default="auto",
        # auto: processes when the model runs on a GPU (decode is then the bottleneck, and on a
        # 16-core H100 host 16 decode threads reached only ~3 cores' worth: the GIL), threads on
        # CPU, where decode shares the cores with the model anyway.
        description="Decode pool: thread, process, or auto (process on a GPU, thread on CPU).",
    )
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=89_478_485, ge=1,
                                  description="Decompression-bomb limit (PIL's default).")

    store_lock_wait_seconds: float = Field(
        default=10.0, ge=0,
        description="Embedded store: how long a read (search, collections) waits for a collection another "
                    "process has open before it gives up with exit 3. Writes never wait.",
    )

    min_free_mb: float = Field(
        default=128, ge=0,
        description="Embedded store: MiB kept free on its filesystem; a run stops with an error (exit 1) "
                    "before a write would go below it (qdrant-edge dies with SIGBUS on a full disk).",
    )
    rebuild_min_share: float = Field(
        default=0.98, ge=0, le=1,
        description="A rebuilt version goes live only with at least this share of the live version's points.",
    )
    rebuild_max_failed: int | None = Field(
        default=None, ge=0,
        description="A rebuilt version goes live only if at most this many files failed (unset: no limit).",
    )

    allow_outside_root: bool = Field(
        default=False,
        description="Index symlinks whose target, and manifest rows whose path, lie outside the corpus root. "
                    "Off: they are skipped with a reason and never opened.",
    )

    # --- distributed ingestion (Ray Data) -------------------------------------
    ingest_engine: Literal["local", "ray"] = Field(
        default="local",
        description="local: one process; ray: decode tasks and model actors on a Ray cluster.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster: unset starts a local runtime; 'auto' or 'ray://head:10001'.",
    )
    ray_embed_actors: int = Field(
        default=0, ge=0,
        description="Model actors; 0: one per GPU of the cluster, or one CPU actor without GPUs.",
    )
    ray_write_streams: int = Field(
        default=2, ge=1,
        description="Parallel upsert actors writing to a Qdrant server (Qdrant's guidance: 2-4).",
    )

    # --- search -------------------------------------------------------------
    hnsw: bool = Field(default=False,
                       description="Approximate search; exact search is the default.")
    hnsw_ef: int = Field(default=128, ge=1)

    # --- the HTTP server (mmrag serve) -------------------------------------------
    api_key: str | None = Field(default=None, repr=False,
                                description="Bearer token required on every endpoint but /healthz and /readyz; unset: open.")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                    description="Origins allowed by CORS (JSON list or comma list); empty: CORS off.")
    upload_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    upload_max_pixels: int = Field(default=40_000_000, ge=1,
                                   description="Decompression-bomb limit of uploaded query images.")
    upload_formats: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"])
    facet_fields: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                    description="Payload fields offered as filters on the search page; empty: the keyword indexes.")

    # --- hybrid search (issue 14) -------------------------------------------
    sparse_fields: list[str] = Field(
        default_factory=list,
        description="Manifest text fields indexed by BM25 beside the caption (JSON list, e.g. [\"tags\"]).")
    fusion: Literal["rrf", "dbsf"] = Field(default="rrf",
                                           description="Fusion of fused/hybrid searches: weighted RRF or DBSF.")
    sparse_weight: float = Field(default=3.0, gt=0)
    dense_weight: float = Field(default=0.5, gt=0)
    mmr_lambda: float = Field(default=0.5, ge=0, le=1)
    mmr_candidates: int = Field(default=50, ge=1)
    min_relevance: float | None = Field(
        default=None, ge=0, le=100,
        description="Percentile of the calibrated null distribution a hit must beat (see `mmrag calibrate`).")
    gate_margin: float = Field(
        default=0.0, ge=0, le=1,
        description="reindex --rebuild --gate: how much lower the new recall@k may be than the live one.")

    # --- remote Qdrant ------------------------------------------------------
    qdrant_url: str | None = Field(default=None, validation_alias=AliasChoices("QDRANT_URL", "qdrant_url"))
    qdrant_api_key: str | None = Field(default=None, validation_alias=AliasChoices("QDRANT_API_KEY", "qdrant_api_key"))
    qdrant_prefer_grpc: bool = Field(default=False, validation_alias=AliasChoices("QDRANT_PREFER_GRPC", "qdrant_prefer_grpc"))
    qdrant_https: bool | None = Field(default=None, validation_alias=AliasChoices("QDRANT_HTTPS", "qdrant_https"))
    qdrant_timeout: float = Field(default=30.0, gt=0, validation_alias=AliasChoices("QDRANT_TIMEOUT", "qdrant_timeout"))
    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)

    # --- retries (remote store) ---------------------------------------------
    retry_attempts: int = Field(default=6, ge=1)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    retry_initial_seconds: float = Field(default=0.5, gt=0)


    @property
    def threads(self) -> int:
        """Model CPU threads: MMRAG_MODEL_THREADS, else the older MMRAG_TORCH_THREADS (0 = runtime default)."""
        return self.model_threads or self.torch_threads

    @field_validator("cors_origins", "upload_formats", "facet_fields", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # `a,b` as well as `["a","b"]`: env values are easier to write without JSON
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the process environment and `./.env` (cached per process)."""
    return Settings()
