"""One settings object, read from ``SCORER_*`` environment variables.

Built once per entry point (the CLI group, a worker's boot) and passed down; nothing else reads
``os.environ``. Tests build their own ``Settings(...)`` with keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_TRISTATE: dict[str, bool | None] = {"auto": None, "on": True, "off": False}

PROFILES: dict[str, dict[str, Any]] = {
    "reference": {},
    "fast": {
        "spleeter_frames": 0,
        "separation_bf16": "auto",
        "infer_bf16": "auto",
        "prefer_student": True,
    },
}
"""What each `SCORER_PROFILE` sets; a setting given explicitly (environment or keyword) wins.
`reference` is the exact reference path (the field defaults); `fast` trades a little accuracy
for speed: Spleeter's segment by need, its U-Nets and the ensemble in bf16 where native, the
active model's newest student (docs/BENCHMARKS.md, fast profile)."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "scorer"


class Settings(BaseSettings):
    """Every knob of scorer. Each field is ``SCORER_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded database, model weights and checkpoints live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Unset: a SQLite file <data_dir>/scorer.db (embedded mode).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://...). Unset: stages run in-process (embedded mode).",
    )
    model_dir: Path | None = Field(
        default=None,
        description="Model versions' weights. Unset: <data_dir>/models. Must be shared by workers.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Torch device for separation and inference; auto = cuda if present.",
    )
    torch_threads: int = Field(
        default=0, description="torch intra-op threads per process; 0 = number of cores."
    )
    preprocess_batch: int = Field(
        default=8, ge=1, description="Snippets separated and featurised per batch."
    )
    preprocess_processes: int = Field(
        default=0,
        ge=0,
        description="Embedded mode: processes (1 torch thread each) that preprocess; 0 = auto.",
    )
    infer_batch: int = Field(default=64, ge=1, description="Windows per ensemble forward.")
    infer_bf16: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Ensemble inference in bfloat16 autocast; auto = on a GPU or a CPU with "
        "native bf16 (AVX512-BF16/AMX), ~2x faster there; off = float32 everywhere.",
    )
    train_stack: int = Field(
        default=0,
        ge=0,
        description="Members trained at once in one batched computation; 0 = auto "
        "(all on a GPU, one at a time on the CPU).",
    )
    train_bf16: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Training forward passes in bfloat16 autocast (weights stay float32); auto = "
        "on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), ~1.7x faster there.",
    )
    train_processes: int = Field(
        default=1,
        ge=1,
        description="CPU training: members trained in parallel, one process each (1 = one "
        "member at a time with every core; measured faster on 2 idle cores).",
    )
    separation: bool = Field(
        default=True,
        description="Separate vocals with Spleeter first (part of the front-end version).",
    )
    voice_features: bool = Field(
        default=True,
        description="Compute a speaker embedding (resemblyzer) of the separated vocals beside "
        "the log-mel, and fit a voice head with the members: +9.7 points on held-out singers "
        "(docs/RESULTS.md 0f); false = the reference's log-mel alone.",
    )
    profile: Literal["reference", "fast"] = Field(
        default="reference",
        description="reference = the exact reference path; fast = Spleeter's segment by need, "
        "bf16 where native and the active model's newest distilled student, also for models "
        "trained at T = 512 (a little accuracy for speed: docs/BENCHMARKS.md). Settings given "
        "explicitly override the profile's.",
    )
    spleeter_frames: int = Field(
        default=512,
        ge=0,
        description="Spleeter segment length T in STFT frames (multiple of 64; 512 = official); "
        "0 or auto = by need: the smallest multiple of 64 covering the input, at most 512 "
        "(192 for a 3 s clip). Part of the front-end version.",
    )
    separation_bf16: Literal["auto", "on", "off"] = Field(
        default="off",
        description="Spleeter's U-Nets in bfloat16 autocast (STFT and masks stay float32); auto = "
        "on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), ~1.6x faster separation there, "
        "vocals ~34-43 dB SDR from float32's. Part of the front-end version; the fast profile "
        "sets auto.",
    )
    prefer_student: bool = Field(
        default=False,
        description="Score with the newest distilled student (scorer distill) of the active "
        "model when it has one; the active model otherwise.",
    )
    max_duration_s: float = Field(
        default=14_400.0,
        ge=0,
        description="Policy: longer files fail with a clear reason (checked on the header); "
        "0 = no limit. Memory does not depend on it: long files are featurised in blocks.",
    )
    max_file_mb: float = Field(
        default=2048.0,
        gt=0,
        description="Larger input files fail (checked by stat, before a byte is read).",
    )
    max_message_mb: float = Field(
        default=32.0,
        gt=0,
        description="Audio bytes one preprocess message may carry (and one file held whole in "
        "memory); a larger file travels as its path with SCORER_SHARED_INPUT, else fails.",
    )
    shared_input: bool = Field(
        default=False,
        description="Workers read the same input paths as the producer (a shared mount): a file "
        "over SCORER_MAX_MESSAGE_MB is sent as its path, checked against its sha by the worker.",
    )
    min_tail_s: float = Field(
        default=1.0,
        ge=0,
        description="A file's last partial 3 s window is scored only if at least this long.",
    )

    batch_flush_ms: int = Field(
        default=200,
        ge=1,
        description="GPU worker: run a partial batch after this many milliseconds (T).",
    )
    queue_bound: int = Field(
        default=500,
        ge=1,
        description="Enqueue waits while the preprocess queue holds more messages than this.",
    )
    queue_bound_mb: float = Field(
        default=512.0,
        gt=0,
        description="Enqueue also waits while the broker holds more preprocess message bytes "
        "than this (queued and unacknowledged; Redis memory).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Deliveries of one stage that died mid-work before its snippet is failed "
        "(a poison message); deaths of a training job's worker before the job fails.",
    )
    task_time_limit_s: int = Field(
        default=900,
        ge=1,
        description="Hard time limit of one task (a worker child is killed); a preprocess "
        "task of a long file gets more (SCORER_TASK_TIME_PER_AUDIO_S).",
    )
    task_time_per_audio_s: float = Field(
        default=1.0,
        ge=0,
        description="A preprocess task's time limit per second of its audio (plus 60 s, never "
        "below SCORER_TASK_TIME_LIMIT_S): ~6x Spleeter's 1-thread cost, ~3x the slowest run "
        "measured (docs/BENCHMARKS.md, long files).",
    )
    visibility_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="Redis redelivers an unacknowledged message after this; > the longest task.",
    )
    job_stale_after_s: int = Field(
        default=120,
        ge=1,
        description="A running training job silent this long is taken to be dead and re-claimed.",
    )
    reconcile_after_s: int = Field(
        default=900,
        ge=1,
        description="`scorer reconcile` re-publishes what has waited longer than this.",
    )
    reconcile_every_s: int = Field(
        default=60,
        ge=0,
        description="The reconciler service (python -m worker.periodic) runs a bounded "
        "reconcile this often; 0 = never.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Workers serve Prometheus metrics on this port (one per worker process "
        "tree); 0 = off.",
    )
    metrics_addr: str = Field(
        default="127.0.0.1",
        description="Address the metrics port binds to (0.0.0.0 for a scraper on another host).",
    )

    @field_validator("spleeter_frames", mode="before")
    @classmethod
    def _frames_auto(cls, value: Any) -> Any:
        """`auto` is the by-need segment's name; it is stored as 0."""
        return 0 if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator("spleeter_frames")
    @classmethod
    def _frames_multiple(cls, value: int) -> int:
        if value % 64:
            raise ValueError(f"must be a multiple of 64 or 0 (auto), got {value}")
        return value

    @model_validator(mode="after")
    def _apply_profile(self) -> Settings:
        """The profile's values for every field not given explicitly."""
        for name, value in PROFILES[self.profile].items():
            if name not in self.model_fields_set:
                object.__setattr__(self, name, value)
        return self

    @property
    def segment_override(self) -> int | None:
        """The Spleeter segment that replaces a model's own when scoring with it (the fast
        profile), or None: the model's front end as it was trained (the reference)."""
        return self.spleeter_frames if self.profile == "fast" else None

    @property
    def infer_amp(self) -> bool | None:
        """``infer_bf16`` as the Ensemble's ``amp``: None = decide from the hardware."""
        return _TRISTATE[self.infer_bf16]

    @property
    def separation_amp(self) -> bool | None:
        """``separation_bf16`` as a tri-state: None = decide from the hardware."""
        return _TRISTATE[self.separation_bf16]

    @property
    def train_amp(self) -> bool | None:
        """``train_bf16`` as training's ``amp``: None = decide from the hardware."""
        return _TRISTATE[self.train_bf16]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'scorer.db'}"

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def embedded(self) -> bool:
        return not self.broker_url
