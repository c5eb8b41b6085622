"""`scorer distill V`: one student network that carries ensemble V's knowledge.

The teacher scores every window that has cached features of its front end (labelled or not: a
library already enqueued is free training signal); the student learns those averaged
probabilities (training/distill.py) and becomes a model version like any other: `scorer
models`, `activate`, re-scoring from cached features, `scorer evaluate`. It runs in this
process, on this machine's device (SCORER_DEVICE), in embedded and distributed set-ups alike:
it needs the database and the model folder, not the workers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scorer.cli.common import ready_engine, settings_of
from scorer.errors import ScorerError

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy import Engine

    from scorer.db.models import ModelVersion

ARCHS = ("resnet10", "resnet18", "resnet34")
CHUNK = 512
"""Windows scored by the teacher per call: bounds its activations, not the features in memory."""


@click.command("distill")
@click.argument("teacher")
@click.option("--arch", type=click.Choice(ARCHS), default="resnet18", show_default=True,
              help="The student's network.")  # fmt: skip
@click.option("--name", help="Model version name; default <teacher>-student-<arch>.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="Groups (singers) held out to validate the student.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--activate/--no-activate", default=False, show_default=True,
              help="Make the student the active model when it is done.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def distill(
    ctx: click.Context,
    teacher: str,
    arch: str,
    name: str | None,
    epochs: int,
    val_fraction: float,
    seed: int,
    activate: bool,
    as_json: bool,
) -> None:
    """Train one ARCH student on model version TEACHER's averaged probabilities over every
    cached feature of its front end; the student is a new model version (1 member).

    Killed, the same command resumes from the student's last finished epoch.
    """
    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from training.params import TrainParams
    from worker.runtime import Runtime, configure_threads
    from worker.training_job import check_name, name_conflict

    settings = settings_of(ctx)
    configure_threads(settings)
    engine = ready_engine(settings)
    with make_sessionmaker(engine)() as s:
        mv = queries.model_by_name_or_id(s, teacher)
        if mv is None:
            raise ScorerError(f"no model version {teacher!r}: see `scorer models`")
        s.expunge(mv)
        name = name or f"{mv.name}-student-{arch}"
        check_name(name)
        conflict = name_conflict(s, name)
        if conflict:
            raise ScorerError(conflict)
    x, labels, groups = _features(engine, mv)
    if len(x) == 0:
        raise ScorerError(
            f"no cached features of front end {mv.frontend_version}: enqueue audio first"
        )
    rt = Runtime(settings)
    soft = _teacher_probabilities(rt, mv, x, _teacher_voice(engine, rt, mv))
    params = TrainParams(
        members=1, epochs=epochs, arch=arch, seed=seed, val_fraction=val_fraction,
        normalize=mv.params.get("normalize", "none"),
    )  # fmt: skip
    result, train_s = _train(settings.data_dir / "distill" / name, params, x, soft, labels, groups,
                             rt.device)  # fmt: skip
    version = _register(engine, settings.resolved_model_dir, mv, name, params, result, activate)
    summary = {
        "name": version.name,
        "id": version.id,
        "teacher": mv.name,
        "arch": arch,
        "windows": len(x),
        "labelled": int((labels >= 0).sum()),
        "val_acc": result.val_acc,
        "val_agreement_with_teacher": result.val_agreement,
        "train_s": round(train_s, 1),
        "active": version.active,
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    acc = "-" if result.val_acc is None else f"{result.val_acc:.4f}"
    agree = "-" if result.val_agreement is None else f"{result.val_agreement:.4f}"
    click.echo(
        f"model version {version.name} (id {version.id}): student {arch} of {mv.name}, "
        f"{len(x)} windows, val acc {acc}, agreement with the teacher {agree}"
    )


def _features(engine: Engine, mv: ModelVersion) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every cached window of the teacher's front end: (N, 299, 40) float16, labels (class
    index, -1 = unlabelled or a class the teacher does not know), groups (a file's windows
    share its group; a file without one is its own)."""
    import numpy as np
    from sqlalchemy import select

    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import Feature, Snippet

    with make_sessionmaker(engine)() as s:
        rows = s.execute(
            select(Snippet.sha256, Snippet.label, Snippet.group)
            .join(Feature, Feature.sha256 == Snippet.sha256)
            .where(Feature.frontend_version == mv.frontend_version)
            .order_by(Snippet.sha256)
        ).all()
        xs, labels, groups = [], [], []
        index = {c: i for i, c in enumerate(mv.classes)}
        for start in range(0, len(rows), 256):
            part = rows[start : start + 256]
            feats = queries.load_features(s, [r[0] for r in part], mv.frontend_version)
            for sha, label, group in part:
                w = feats[sha]
                xs.append(w)
                labels += [index.get(label, -1) if label else -1] * len(w)
                groups += [group or sha] * len(w)
    if not xs:
        return np.zeros((0, 299, 40), np.float16), np.zeros(0, np.int64), []
    return np.concatenate(xs), np.array(labels, dtype=np.int64), groups


def _teacher_voice(engine: Engine, rt: Any, mv: ModelVersion) -> np.ndarray | None:
    """The voice features of `_features`' windows (same order) when the teacher has a voice
    head, so the student learns the fused verdict; NaN rows where a snippet has none."""
    import numpy as np
    from sqlalchemy import select

    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import Feature, Snippet
    from worker.stages import voice_windows

    ens = rt.ensemble(mv.weights_uri, classes=mv.classes)
    if ens.voice_head is None:
        return None
    parts = []
    with make_sessionmaker(engine)() as s:
        shas = list(
            s.scalars(
                select(Snippet.sha256)
                .join(Feature, Feature.sha256 == Snippet.sha256)
                .where(Feature.frontend_version == mv.frontend_version)
                .order_by(Snippet.sha256)
            )
        )
        for start in range(0, len(shas), 256):
            part = shas[start : start + 256]
            feats = queries.load_features(s, part, mv.frontend_version)
            parts.append(voice_windows(s, ens, part, feats))
    return np.concatenate(parts) if parts else None


def _teacher_probabilities(
    rt: Any, mv: ModelVersion, x: np.ndarray, voice: np.ndarray | None = None
) -> np.ndarray:
    """The teacher's verdict on every window: its calibrated mean, fused with its voice head
    where it has one (``voice``, aligned with x)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    ens = rt.ensemble(mv.weights_uri, classes=mv.classes)
    out = []
    bar = tqdm(total=len(x), desc=f"teacher {mv.name}", unit="window", disable=None)
    for start in range(0, len(x), CHUNK):
        part = torch.from_numpy(x[start : start + CHUNK])
        vb = None if voice is None else torch.from_numpy(voice[start : start + CHUNK])
        out.append(ens.decision(ens.member_proba(part), vb).cpu().numpy())
        bar.update(len(part))
    bar.close()
    return np.concatenate(out).astype(np.float32)


def _train(work: Path, params: Any, x: Any, soft: Any, labels: Any, groups: Any,
           device: str) -> tuple[Any, float]:  # fmt: skip
    from tqdm import tqdm

    from training.distill import distill as run_distill
    from training.ensemble import native_bf16

    bar = tqdm(total=params.epochs, desc="student", unit="epoch", disable=None)

    def progress(record: dict[str, Any]) -> None:
        bar.n = record["epoch"]
        bar.set_postfix(val_acc=record.get("val_acc"), agree=record.get("val_agreement"))
        bar.refresh()

    t0 = time.monotonic()
    try:
        result = run_distill(
            params, x, soft, labels, groups, work, device,
            progress=progress, amp=native_bf16(device),
        )  # fmt: skip
    except ValueError as exc:  # e.g. a killed run resumed with other options
        raise ScorerError(f"{exc} (or delete {work})") from None
    finally:
        bar.close()
    return result, time.monotonic() - t0


def _register(
    engine: Engine,
    model_dir: Path,
    teacher: ModelVersion,
    name: str,
    params: Any,
    result: Any,
    activate: bool,
) -> ModelVersion:
    """Save the student into a new folder of its own and commit its row (a name taken in the
    meantime is refused, and no other version's folder is touched)."""
    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import ModelVersion
    from training.ensemble import save_members
    from worker.training_job import name_conflict, new_model_folder

    folder = new_model_folder(model_dir, name)
    meta = {
        "classes": list(teacher.classes),
        "arch": params.arch,
        "normalize": params.normalize,
        "frontend": teacher.frontend,
        "frontend_version": teacher.frontend_version,
        "distilled_from": teacher.name,
    }
    save_members(folder, [result.student], meta)
    metrics = {
        "ensemble_val_acc": result.val_acc,
        "val_agreement_with_teacher": result.val_agreement,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "history": result.history,
        "distilled_from": teacher.name,
    }
    with make_sessionmaker(engine).begin() as s:
        conflict = name_conflict(s, name)
        if conflict:
            raise ScorerError(f"{conflict}; the student's weights are kept in {folder}")
        mv = ModelVersion(
            name=name,
            classes=list(teacher.classes),
            frontend_version=teacher.frontend_version,
            frontend=teacher.frontend,
            members=1,
            params={**params.to_dict(), "distilled_from": teacher.name},
            metrics=_finite(metrics),
            weights_uri=folder.name,
            active=False,
        )
        s.add(mv)
        s.flush()
        if activate:
            queries.activate_model(s, mv.id)
            mv.active = True
        s.expunge(mv)
    return mv


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON columns refuse NaN on PostgreSQL: None instead."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


COMMANDS = [distill]
