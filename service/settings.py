"""Every setting of the service and its workers, read once from CLOZE_* environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOZE_", env_file=".env", extra="ignore")

    # Where the embedded default keeps its database, objects and broker queue.
    home: Path = Field(default=Path("~/.cloze"))

    # Empty means the embedded default under `home`: SQLite, a local object directory and
    # kombu's filesystem transport (a real Celery broker with no server to run).
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    # For S3-compatible stores (MinIO): the endpoint; credentials come from the usual
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables, as boto and s3fs expect.
    s3_endpoint_url: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Training jobs go to "<train_queue>.cpu" or "<train_queue>.cuda" by their
    # resources.device (service/routing.py); CPU workers also drain "<train_queue>" itself,
    # the one queue of earlier releases. Each job holds a CPU or GPU for hours: one job at a
    # time per device.
    train_queue: str = "train"
    # Celery over Redis redelivers an unacknowledged message after this many seconds, even
    # while it is still running (celery#5935): keep it above the longest job.
    visibility_timeout_s: int = Field(default=24 * 3600, ge=60)

    # Fault tolerance. A running job writes a heartbeat every heartbeat_interval_s; the
    # reaper (in API processes and workers) re-queues one whose heartbeat is older than
    # heartbeat_timeout_s (its worker died) and re-sends queued jobs whose message may have
    # been lost (a broker restart without persistence) after requeue_after_s. Each worker's
    # main process beats on the same schedule, so /health can count live workers.
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_timeout_s: float = Field(default=90.0, gt=0)
    reaper_interval_s: float = Field(default=15.0, gt=0)
    requeue_after_s: float = Field(default=600.0, gt=0)
    # Crash leftovers (service/orphans.py): stored objects no row records and the scratch
    # folders of processes that died are collected when an API or worker starts and then
    # every orphan_interval_s; a stored object changed in the last orphan_grace_s is left
    # alone (an upload in progress keeps writing).
    orphan_grace_s: float = Field(default=3600.0, gt=0)
    orphan_interval_s: float = Field(default=3600.0, gt=0)
    # Attempts per job before it is failed; errors that cannot heal are never retried.
    max_attempts: int = Field(default=3, ge=1, le=20)
    # How often a running job reads its cancel and pause flags (a query per step would cost
    # more than a tiny model's step; a second is "within a few steps" for any model).
    stop_poll_s: float = Field(default=1.0, ge=0)
    # How long a worker keeps retrying database writes while the database is down.
    db_retry_s: float = Field(default=120.0, ge=0)

    # Webhooks (service/webhook_sender.py). URLs that resolve to private, loopback, link-local or
    # other non-global addresses are refused (a webhook must not reach into our network)
    # unless this is true; None: allowed only where no API key is required and the API
    # listens on loopback only (the embedded default, one person's own machine). Never by
    # default where keys are required: a keyed instance behind a local proxy listens on
    # loopback too, and its tenants must not reach 169.254.169.254 or scan ports.
    webhook_allow_private: bool | None = None
    # Attempts per delivery, the first retry's delay (doubled for each next one: 6 attempts
    # span ~10 min), one attempt's wall-clock limit (name lookup, connection, request and
    # the answer's head; the body is not read), and how often each API process looks for
    # deliveries that are due.
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_retry_base_s: float = Field(default=20.0, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_poll_interval_s: float = Field(default=2.0, gt=0)
    # Attempts each API process makes at once, and at most how many of them go to one host
    # or belong to one owner's jobs: slow receivers hold a few of them, never all.
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    webhook_concurrency_per_host: int = Field(default=4, ge=1)
    webhook_concurrency_per_owner: int = Field(default=2, ge=1)

    # Limits on what a client may send.
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_uncompressed_bytes: int = Field(default=20 * 1024**3, ge=1)
    max_jsonl_line_bytes: int = Field(default=16 * 1024**2, ge=1024)
    # Decompressed bytes per compressed byte, counted as they are written (a gzip corpus or
    # a model archive): text compresses ~4x and weights ~1.1x; a bomb does 1000x. Past the
    # first 8 MiB only.
    max_compression_ratio: float = Field(default=20.0, ge=1)
    # Bytes a model archive may extract to (counted as written, never as declared).
    max_extract_bytes: int = Field(default=8 * 1024**3, ge=1)
    # Parameters an imported model may have: config.json decides what inference allocates.
    max_import_parameters: int = Field(default=1_000_000_000, ge=1)
    # Bytes each owner may keep (datasets and models, as the API reports their bytes, and
    # the checkpoints and token shards their jobs stored); 0 turns quotas off.
    storage_quota_bytes: int = Field(default=100 * 1024**3, ge=0)
    max_inference_inputs: int = Field(default=64, ge=1)
    max_inference_chars: int = Field(default=20_000, ge=1)
    # Texts one embeddings request may hold (OpenAI's figure: clients such as LangChain
    # send up to 1,000 at a time); the body limit bounds their characters.
    max_embedding_inputs: int = Field(default=2048, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    # Every request body but the multipart uploads (which have max_upload_bytes): refused
    # with 413 before it is read and before the caller is authenticated. 8 MiB holds the
    # largest valid inference request (64 texts of 20,000 characters, JSON-escaped).
    max_json_body_bytes: int = Field(default=8 * 1024**2, ge=1024)
    # Inference output is bounded before the model runs: mask tokens in one fill-mask text,
    # and the items one request may produce (fill-mask: masks x top_k over all inputs;
    # classify: inputs x top_k; token classification: input tokens; generation: inputs x
    # max_new_tokens).
    max_masks_per_input: int = Field(default=16, ge=1)
    max_inference_outputs: int = Field(default=4096, ge=1)

    # API keys. None: required unless the API listens on loopback only (the embedded
    # default, used by one person on their own machine).
    require_api_keys: bool | None = None
    # A secret that GET /metrics then requires (`Authorization: Bearer ...`; an admin API key
    # also does). Unset: /metrics needs no key, but where keys are required it leaves out
    # the series labelled by job id (every tenant's running jobs) for all but admin keys.
    metrics_key: SecretStr | None = None
    # Requests per minute per key (or per client address without a key); 0 turns it off.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # Whether the budget applies to batched inference (fill-mask, classify, token
    # classification, embeddings) and generation too. By default those are admitted by load
    # instead: each model's queue is bounded (CLOZE_INFERENCE_MAX_QUEUE,
    # CLOZE_GENERATE_MAX_QUEUE; 503 + Retry-After when full).
    rate_limit_inference: bool = False
    # Jobs a key may have queued or running at once.
    max_active_jobs: int = Field(default=4, ge=1)
    # Browser origins allowed to call the API (CORS); none by default.
    cors_origins: list[str] = Field(default_factory=list)
    # Host header names the API answers to (DNS rebinding). Empty: the loopback names and
    # `host`, checked whenever a request needs no key; when set, checked on every request
    # ("*" turns the check off).
    allowed_hosts: list[str] = Field(default_factory=list)
    # Proxies (addresses or CIDR networks) whose X-Forwarded-For / X-Forwarded-Proto are
    # believed; from anyone else those headers are ignored. Empty: none.
    trusted_proxies: list[str] = Field(default_factory=list)
    # How long an idle keep-alive connection stays open. Longer than the idle timeout of the
    # load balancers and clients in front (60 s on AWS ALB and nginx): with uvicorn's 5 s,
    # a request sent on a connection the server is just closing fails (a 502 at a proxy,
    # a ReadError at a client).
    keep_alive_s: int = Field(default=65, ge=1, le=3600)
    # Callers the in-process rate limiter remembers at once (the least recent are dropped).
    rate_limit_max_callers: int = Field(default=100_000, ge=1)
    # Event streams (GET /v1/jobs/{id}/stream) each API process keeps open at once, per
    # caller (its key, or its address without one) and in all; one more is 429 with
    # Retry-After. A stream is one request however long it lasts, so the rate limit alone
    # let one client hold 1,278 of them.
    max_streams_per_caller: int = Field(default=8, ge=1)
    max_streams: int = Field(default=128, ge=1)

    # Inference keeps this many models loaded; older ones are dropped first.
    max_loaded_models: int = Field(default=4, ge=1)
    # ... and at most this many bytes of parameters and buffers among them (least recently
    # used dropped first); a model larger than this on its own is not served.
    model_cache_bytes: int = Field(default=2 * 1024**3, ge=1)
    # Dynamic batching (service/inference/batcher.py): sequences run together in one forward
    # pass; how long an idle model waits for more before it runs (0: at once, the requests
    # that arrive meanwhile form the next batch); sequences that may wait per model before
    # requests are refused with 503 + Retry-After.
    inference_max_batch: int = Field(default=32, ge=1, le=1024)
    inference_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    inference_max_queue: int = Field(default=512, ge=1)
    # Threads for inference's tensor operations (0: one per CPU this process may use).
    inference_threads: int = Field(default=0, ge=0)
    # "auto": bf16 on a GPU or a CPU with native bf16 (AMX, AVX512-BF16), unless it changes
    # the top-5 on the warm-up probes; fp32 elsewhere (emulated bf16 is slower).
    inference_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # "trace": serve the batched tasks' forward pass as a TorchScript graph, checked against
    # the eager pass at load (service/inference/graph.py); "eager": transformers' modules.
    inference_graph: Literal["trace", "eager"] = "trace"
    # Generation (service/inference/generation.py: continuous batching on the decoder, one
    # loop per model): sequences decoded together, sequences that may wait to join the batch
    # (one more is refused with 503 + Retry-After), and the tokens (prompt + max new tokens)
    # a model's running sequences may hold in their key/value cache together; one request
    # needing more than that alone is a 422. Stop sequences per request: at most
    # max_stop_sequences (TGI's default figure).
    generate_max_batch: int = Field(default=32, ge=1, le=1024)
    generate_max_queue: int = Field(default=256, ge=1)
    generate_max_tokens: int = Field(default=32768, ge=1)
    max_stop_sequences: int = Field(default=4, ge=0, le=64)

    # Database connections per process (API or worker). A request that finds the pool
    # exhausted for db_pool_timeout_s gets a 503 with Retry-After instead of waiting.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    db_pool_timeout_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _embedded_defaults(self) -> "Settings":
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'cloze.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = f"file://{self.home / 'objects'}"
        if self.database_url.startswith(("postgresql://", "postgres://")):
            # psycopg 3 is the driver we ship.
            self.database_url = "postgresql+psycopg://" + self.database_url.split("://", 1)[1]
        return self

    @property
    def loopback_only(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"}

    @property
    def api_keys_required(self) -> bool:
        return self.require_api_keys if self.require_api_keys is not None \
            else not self.loopback_only

    @property
    def webhook_private_addresses(self) -> bool:
        """Whether a webhook may point at a private, loopback or link-local address."""
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.loopback_only and not self.api_keys_required

    @property
    def broker_dir(self) -> Path:
        """Queue folder of the filesystem broker (embedded default only)."""
        return self.home / "broker"

    @property
    def cache_dir(self) -> Path:
        """Local copies of exported models that inference has loaded."""
        return self.home / "cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
