"""Service settings: the one place that reads environment variables.

Library code never reads the environment; the service and the CLI build one
:class:`Settings` and pass the values down explicitly.

    PERSONALIZE_DATA_DIR     model cache, SQLite file, head artifacts (default: per-user data dir)
    DATABASE_URL             SQLAlchemy URL (default: SQLite file in the data dir)
    REDIS_URL                optional; profile cache, rate limits, cross-replica head events
    PERSONALIZE_BASE_MODEL   base model name or path (default: the embedded model)
    PERSONALIZE_DTYPE        auto (the decoder in bfloat16 where it is fast), float32, bfloat16 or float16
    PERSONALIZE_REMOTE_URL   an upstream server running the base model (vLLM, ...); PERSONALIZE_REMOTE_MODEL its model
    PERSONALIZE_REWARD_ROOT  the only folder the service loads hf:<dir> reward models from (default DATA_DIR/rewards)
    PERSONALIZE_FEEDBACK_RETENTION_DAYS  how long feedback texts are kept (default 30; 0: never stored)
    PERSONALIZE_*            limits and server address (see the fields below)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from platformdirs import user_data_path
from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import torch


def default_data_dir() -> Path:
    return user_data_path("personalize", appauthor=False)


class Settings(BaseSettings):
    """Every knob of the service, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZE_", extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = Field(default="", validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    """SQLAlchemy URL; empty means the SQLite file in the data dir."""
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    redis_prefix: str = Field(default="personalize", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_retry_s: float = Field(default=2.0, ge=0)
    """After a Redis error, skip Redis for this long (requests do not each wait on a timeout)."""
    base_model: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The base model's dtype. ``auto``: the decoder runs in bfloat16 where bf16 products are fast (CUDA,
    CPUs with AVX512-BF16/AMX), else float32; on a CPU the loaded weights stay float32 (training reads
    them) and the decoder keeps its own bf16 copy. A named dtype is used for both."""

    remote_url: str | None = None
    """An OpenAI-compatible server (vLLM, ...) running the base model: the local model then only carries the
    heads (it must share the upstream's tokenizer) and the upstream proposes the tokens."""
    remote_model: str | None = None
    """The model name the upstream serves (its ``--served-model-name``)."""
    remote_api_key: str | None = None
    """Bearer key for an upstream that needs one."""
    remote_timeout_s: float = Field(default=60.0, gt=0)
    """How long one upstream call may take (retried twice with backoff before the request fails with 504)."""
    remote_tokenizer_hash: str | None = None
    """For an upstream without ``/tokenize``: its tokenizer's fingerprint, which must equal the local one."""

    reward_root: Path | None = None
    """The folder ``hf:<dir>`` rewards named by heads must lie in for the service (default: DATA_DIR/rewards)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    max_tokens_limit: int = Field(default=1024, ge=1)
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = Field(default=128, ge=1)
    queue_size: int = Field(default=64, ge=1)
    """Requests waiting for the decoder beyond this get 429."""
    max_batch_size: int = Field(default=16, ge=1)
    """Most requests decoding at once; the others wait in the queue (16: a duel's answers decode together)."""
    threads: int = Field(default=0, ge=0, le=1024)
    """CPU threads for the model's arithmetic (0: PyTorch's default, one per physical core). On a machine
    shared with other busy processes (a serving engine polling for work, say), fewer threads than cores
    avoid threads waiting on each other for a core."""
    max_batch_rows: int = Field(default=96, ge=1)
    """Most batch rows decoding at once (a sequence's base row plus one per LoRA head it uses; best-of,
    ivg and aisp count every sample): a heavier request waits for room instead of slowing every step.
    96: a duel's 16 answers steered by four heads (80 rows) decode together."""
    max_request_rows: int = Field(default=64, ge=0)
    """Most batch rows one request may hold at once (0: ``max_batch_rows``; never more than it); a wider
    request gets 422. A light request decoding beside the widest admissible one takes steps that carry
    this many more rows: lower it to bound what one heavy request costs everyone else
    (docs/hardening.md, measured)."""
    kv_cache_mb: int = Field(default=2048, ge=1)
    """The KV cache the live requests may hold at their token limits; a request that would pass it waits."""
    batch_window_ms: float = Field(default=10.0, ge=0, le=1000)
    """An idle decoder waits this long after a request for others to batch with it."""
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    rate_limit_per_minute: int = Field(default=600, ge=0)
    """Requests per API key per minute; 0 disables rate limiting."""
    profile_cache_ttl_s: int = Field(default=300, ge=1)
    head_sync_interval_s: float = Field(default=30.0, gt=0)
    """How often each replica re-reads the active heads from the database (a fallback for Redis)."""
    auto_migrate: bool | None = None
    """Upgrade the database schema on start; default: only for SQLite."""

    # ---- hardening: timeouts, caches, budgets (docs/hardening.md) ----
    db_connect_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    db_statement_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    db_pool_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    """Longest wait for a free pooled connection."""
    db_retry_after_s: int = Field(default=5, ge=1, le=3600)
    """``Retry-After`` on the 503 answered while the database cannot be reached."""
    auth_cache_ttl_s: float = Field(default=10.0, ge=0, le=30)
    """A key seen valid is not re-read from the database for this long (a revocation made elsewhere
    reaches this replica within this time when Redis cannot tell it sooner)."""
    auth_cache_stale_s: float = Field(default=30.0, ge=0, le=30)
    """While the database cannot be reached, a key seen valid this recently keeps working."""
    model_load_retry_s: float = Field(default=2.0, gt=0, le=3600)
    """First wait before loading a model that failed to load again (doubling each try)."""
    model_load_retry_max_s: float = Field(default=60.0, gt=0, le=3600)
    decoder_stall_s: float = Field(default=120.0, gt=0)
    """/readyz reports the decoder stuck when it has work and no step ended for this long."""
    max_in_flight_per_key: int = Field(default=16, ge=0)
    """Completions one API key may have running at once on a replica (0: no limit). A duel
    holds one per answer it generates (16 by default) and draws fewer where this is lower."""
    max_request_work: int = Field(default=65_536, ge=1)
    """Largest work of one completion request: sequences x rows x (prompt + max_tokens) tokens."""
    request_timeout_s: float = Field(default=300.0, ge=0)
    """Server-side deadline of a completion request, queueing included (0: none)."""
    shutdown_timeout_s: float = Field(default=30.0, ge=0)
    """After SIGTERM, how long requests in flight may take to finish."""

    # ---- pairwise feedback (docs/feedback.md) ----
    feedback_retention_days: float = Field(default=30.0, ge=0, le=36_500)
    """How long a comparison's texts (prompt, chosen, rejected) are kept; after that they are blanked and
    only the rewards stay (the fit needs nothing else). 0: the texts are never stored."""
    feedback_rate_limit_per_minute: int = Field(default=60, ge=0)
    """Feedback posts per API key per minute (each scores two answers and refits); 0: no own limit."""
    feedback_l2: float = Field(default=1.0, gt=0, le=1000)
    """Prior precision of the preference fit (higher: the profile moves less per comparison)."""
    duel_step: float = Field(default=2.0, gt=0, le=5)
    """How far (decoder units, L2) the candidate answers of a duel are steered from the profile."""
    duel_candidates: int = Field(default=4, ge=2, le=16)
    """Candidate answers a duel generates (in one batch) to pick the most informative pair from; a duel
    counts as this many generations against rate limits, in-flight slots and the work cap."""
    duel_samples: int = Field(default=4, ge=1, le=8)
    """Answers a duel generates per candidate weight vector (each a different seed): the pair is chosen
    among ``duel_candidates x duel_samples`` answers, and the duel counts as that many generations."""

    duel_keep: int = Field(default=96, ge=0, le=1024)
    """Answers of a user's earlier duels on a prompt kept for their next duel on it (whose pair is chosen
    among its new answers and these, never a pair already asked); 0: nothing is kept."""
    duel_keep_s: float = Field(default=3600.0, ge=0, le=30 * 86_400)
    """How long kept duel answers stay after the duel that kept them (never longer than
    ``feedback_retention_days``; nothing is kept when that is 0)."""

    @property
    def duel_keep_ttl_s(self) -> float:
        """How long kept duel answers live: ``duel_keep_s``, capped by the feedback retention period."""
        return min(self.duel_keep_s, self.feedback_retention_days * 86_400)

    @property
    def duel_shape(self) -> tuple[int, int]:
        """(candidates, samples) of one duel: the settings, shrunk to fit ``max_in_flight_per_key`` when
        they would not (samples first, down to 1, then candidates, down to 2)."""
        candidates, samples, limit = self.duel_candidates, self.duel_samples, self.max_in_flight_per_key
        if limit:
            samples = max(1, min(samples, limit // candidates))
            candidates = max(2, min(candidates, limit // samples))
        return candidates, samples

    @property
    def duel_generations(self) -> int:
        """Answers one duel generates: candidates x samples of :attr:`duel_shape`."""
        candidates, samples = self.duel_shape
        return candidates * samples

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            # The model is frozen; this runs once, during validation.
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'personalize.db'}")
        return self

    @model_validator(mode="after")
    def _stale_not_shorter_than_fresh(self) -> Settings:
        if self.auth_cache_stale_s < self.auth_cache_ttl_s:
            raise ValueError(
                f"auth_cache_stale_s ({self.auth_cache_stale_s}) must be at least auth_cache_ttl_s "
                f"({self.auth_cache_ttl_s})"
            )
        return self

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The dtype to load the base model in, or None for the device's default."""
        import torch

        return None if self.dtype == "auto" else getattr(torch, self.dtype)

    @property
    def artifact_root(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def reward_dir(self) -> Path:
        return self.reward_root or self.data_dir / "rewards"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate
