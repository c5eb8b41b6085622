"""Inputs the cases share: synthesised snippets, scratch databases, model versions on disk.

Everything is built from fixed seeds, so two runs (and baseline and candidate within a run) see
the same audio and the same weights.

Only numpy and torch are imported at module level: the model cases (ensemble, member_forward,
training) then run where just torch is installed, e.g. a GPU machine's image (bench/gpu_suite.sh).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from training.ensemble import save_members
from training.model import build_member

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from pipeline.frontend import FrontendConfig
    from scorer.settings import Settings

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CLASSES = ["none", "male", "female", "multi"]  # == pipeline.synth.LABELS (tested)


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """n stereo 3 s 44.1 kHz mixtures, (2, 132300) float32, labels cycling through LABELS."""
    from pipeline.synth import LABELS, make_snippet

    return [
        make_snippet(LABELS[i % len(LABELS)], np.random.default_rng([seed, i])) for i in range(n)
    ]


def write_wavs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """The same clips as 16-bit stereo WAV files (what `scorer enqueue` would read)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(clips(n, seed)):
        path = folder / f"snippet_{i:04d}.wav"
        sf.write(path, np.round(clip.T * 32767.0).astype(np.int16), 44_100, subtype="PCM_16")
        paths.append(path)
    return paths


def embedded_settings(data_dir: Path) -> Settings:
    """Embedded mode on the CPU with scorer's defaults (batch sizes, T = 512, all cores)."""
    from scorer.settings import Settings

    return Settings(data_dir=data_dir, device="cpu", broker_url=None, database_url=None)


def sqlite_engine(settings: Settings) -> Engine:
    """A migrated SQLite file, configured as scorer configures it (WAL, synchronous=NORMAL)."""
    from scorer.db import migrate
    from scorer.db.engine import make_engine

    engine = make_engine(settings)
    migrate.upgrade(engine)
    return engine


@contextlib.contextmanager
def scratch_postgres() -> Iterator[Engine]:
    """A fresh, migrated PostgreSQL database, dropped afterwards (even on failure)."""
    from sqlalchemy import create_engine, text

    from scorer.db import migrate

    name = f"scorer_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        try:
            migrate.upgrade(engine)
            yield engine
        finally:
            engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def members(n: int, arch: str, seed: int) -> list[torch.nn.Module]:
    """n freshly initialised members (random weights: speed does not depend on training)."""
    torch.manual_seed(seed)
    return [build_member(len(CLASSES), arch).eval() for _ in range(n)]


def register_model(
    engine: Engine,
    settings: Settings,
    name: str,
    n_members: int,
    arch: str,
    seed: int,
    frontend: FrontendConfig | None = None,
) -> int:
    """Save random members as model version `name`, activate it, return its id.

    The same rows and files worker/training_job.py run_job writes, without the training: the
    benchmarks measure scoring, and a trained model runs exactly as fast as a random one.
    """
    from sqlalchemy.orm import Session

    from pipeline.frontend import FrontendConfig
    from scorer.db import queries
    from scorer.db.models import ModelVersion

    frontend = frontend or FrontendConfig(spleeter_frames=settings.spleeter_frames)
    meta = {
        "classes": CLASSES,
        "arch": arch,
        "normalize": "none",
        "frontend": frontend.to_dict(),
        "frontend_version": frontend.version,
    }
    save_members(settings.resolved_model_dir / name, members(n_members, arch, seed), meta)
    with Session(engine) as s, s.begin():
        mv = ModelVersion(
            name=name,
            classes=CLASSES,
            frontend_version=frontend.version,
            frontend=frontend.to_dict(),
            members=n_members,
            params={"arch": arch, "members": n_members, "seed": seed, "bench": True},
            metrics={},
            weights_uri=name,
            active=False,
        )
        s.add(mv)
        s.flush()
        queries.activate_model(s, mv.id)
        return mv.id


def add_snippets(engine: Engine, shas: Sequence[str]) -> None:
    """Snippet rows for `shas` (predictions reference them), in one transaction."""
    from sqlalchemy.orm import Session

    from scorer.db import queries

    rows = [{"sha256": sha, "source_path": f"{sha[:8]}.wav", "size_bytes": 0} for sha in shas]
    with Session(engine) as s, s.begin():
        queries.add_snippets(s, rows)


def session(engine: Engine) -> Session:
    from sqlalchemy.orm import Session

    return Session(engine)


def active_model_id(s: Session) -> int | None:
    from scorer.db import queries

    mv = queries.active_model(s)
    return mv.id if mv else None
