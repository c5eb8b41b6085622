"""Labels written by people (`scorer review`): last write wins, every write is logged, and a
labels file read again does not undo a correction. Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import LABEL_ORIGIN_REVIEW, LabelEvent, Snippet

SHA = "a" * 64


def _snippet(session: Session, label: str | None = "male", group: str | None = None) -> None:
    queries.add_snippets(
        session,
        [{"sha256": SHA, "source_path": "/music/a.wav", "size_bytes": 1, "label": label,
          "group": group}],
    )  # fmt: skip
    session.commit()


def test_set_label_writes_the_label_its_origin_and_an_event(session: Session) -> None:
    _snippet(session)

    event = queries.set_label(
        session, SHA, "female", origin=LABEL_ORIGIN_REVIEW, predicted_label="male"
    )
    session.commit()

    snippet = session.scalars(select(Snippet)).one()
    assert (snippet.label, snippet.label_origin) == ("female", "review")
    assert snippet.labelled_at is not None
    assert event is not None
    logged = session.scalars(select(LabelEvent)).one()
    assert (logged.label, logged.previous_label, logged.origin, logged.predicted_label) == (
        "female", "male", "review", "male",
    )  # fmt: skip


def test_set_label_on_an_unknown_sha_writes_nothing(session: Session) -> None:
    _snippet(session)
    assert queries.set_label(session, "b" * 64, "female", origin=LABEL_ORIGIN_REVIEW) is None
    assert session.scalars(select(LabelEvent)).all() == []


def test_a_labels_file_read_again_keeps_a_review_correction(session: Session) -> None:
    _snippet(session, label="male", group="s1")
    queries.set_label(session, SHA, "female", origin=LABEL_ORIGIN_REVIEW)
    session.commit()

    _snippet(session, label="male", group="s2")  # the same CSV again, a new group

    snippet = session.scalars(select(Snippet)).one()
    assert (snippet.label, snippet.group, snippet.label_origin) == ("female", "s2", "review")


def test_a_labels_file_still_replaces_a_label_that_came_with_data(session: Session) -> None:
    _snippet(session, label="male")
    _snippet(session, label="multi")
    assert session.scalars(select(Snippet.label)).one() == "multi"


def test_browsers_writing_at_once_lose_no_write(engine: Engine) -> None:
    """Several writers on one snippet: every write is logged, each event's previous label is the
    label of the event before it, and the snippet holds the last one (last write wins)."""
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        _snippet(s, label=None)
    writers, writes = 6, 5
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(writes):
                with sessions() as s:
                    queries.set_label(s, SHA, f"l{w}-{i}", origin=LABEL_ORIGIN_REVIEW)
                    s.commit()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    with sessions() as s:
        events = s.scalars(select(LabelEvent).order_by(LabelEvent.id)).all()
        final = s.scalars(select(Snippet.label)).one()
    assert len(events) == writers * writes
    assert [e.previous_label for e in events] == [None] + [e.label for e in events[:-1]]
    assert final == events[-1].label


def test_train_and_evaluate_read_a_review_correction(session: Session) -> None:
    """Corrections are labels like any other: the training data and `scorer evaluate`'s
    labelled files (both read snippets.label) carry the reviewed label."""
    import numpy as np

    from scorer.evaluation import _labelled_in_database
    from worker.training_job import training_data

    _snippet(session, label=None)
    other = "b" * 64
    queries.add_snippets(
        session, [{"sha256": other, "source_path": "/music/b.wav", "size_bytes": 1,
                   "label": "none"}]
    )  # fmt: skip
    for sha in (SHA, other):
        queries.store_features(session, sha, "fe-test", np.zeros((2, 299, 40), np.float16))
    assert {r["sha256"] for r in _labelled_in_database(session, "fe-test")} == {other}

    queries.set_label(session, SHA, "female", origin=LABEL_ORIGIN_REVIEW)
    session.commit()

    _, y, _, classes = training_data(session, "fe-test", None)
    assert sorted(classes[i] for i in y) == ["female", "female", "none", "none"]
    labelled = {r["sha256"]: r["label"] for r in _labelled_in_database(session, "fe-test")}
    assert labelled == {SHA: "female", other: "none"}
