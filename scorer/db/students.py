"""Which model version scores: the active one, or (SCORER_PREFER_STUDENT, the fast profile) the
newest student that `scorer distill` made of it.

A student is recorded as a model version whose params say `distilled_from: <teacher name>`; the
newest is the one with the highest id. The teacher stays the active model, so `scorer models`,
`activate` and the reference profile are unchanged; only scoring under the fast profile takes the
student.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.models import ModelVersion
from scorer.settings import Settings

log = logging.getLogger(__name__)

_told: set[str] = set()
"""Teachers this process has already said something about (said once, not per batch)."""


def teacher_of(model: ModelVersion) -> str | None:
    """The name of the model `model` was distilled from, or None for a trained one."""
    return (model.params or {}).get("distilled_from")


def newest_student(session: Session, teacher: ModelVersion) -> ModelVersion | None:
    """The newest model version distilled from `teacher` (by id), or None."""
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())).all()
    return next((m for m in rows if teacher_of(m) == teacher.name), None)


def scoring_model(session: Session, settings: Settings) -> ModelVersion | None:
    """The model version that scores under `settings`: the active one, or with
    `prefer_student` the active one's newest student (an active student scores itself)."""
    active = queries.active_model(session)
    if active is None or not settings.prefer_student or teacher_of(active) is not None:
        return active
    student = newest_student(session, active)
    said = f"{active.id}:{student.id if student else None}"
    if student is None:
        if said not in _told:
            log.warning(
                "profile %s: the active model %s has no distilled student (scorer distill %s); "
                "scoring with it", settings.profile, active.name, active.name,
            )  # fmt: skip
        _told.add(said)
        return active
    if said not in _told:
        log.warning(
            "profile %s: scoring with %s, the newest student of the active model %s",
            settings.profile, student.name, active.name,
        )  # fmt: skip
    _told.add(said)
    return student
