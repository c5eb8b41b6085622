"""The stages of one snippet's path, shared by the embedded CLI and the Celery tasks.

Each stage is: compute (pipeline/ or training/, no I/O) -> write rows (one transaction, idempotent)
-> return what the next stage needs. A bad item is caught here, at its boundary, and recorded on
its own row; the rest of its batch goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sqlalchemy.orm import Session

from pipeline.blocks import Featurised
from pipeline.decode import Audio
from scorer.db import queries
from scorer.db.models import FILE_WINDOW, ModelVersion, SnippetStatus
from scorer.errors import InputError
from worker.inputs import FileRef
from worker.runtime import Runtime
from worker.sources import load

if TYPE_CHECKING:
    from training.ensemble import Ensemble

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One snippet on its way through preprocessing: its content and where it came from."""

    sha256: str
    data: bytes | FileRef  # a FileRef: a long file, read from its path in blocks
    name: str


@dataclass
class Preprocessed:
    sha256: str
    windows: np.ndarray | None = None  # (W, 299, 40) float16
    audio_info: dict | None = None
    error: str | None = None
    voice: np.ndarray | None = None  # (W, D) float16 voice features, when the runtime asks


def one_line(exc: BaseException) -> str:
    """An exception as one short line for a row's `error`."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


OVER_TIME_LIMIT = (
    "took longer than its task time limit (SCORER_TASK_TIME_LIMIT_S, and "
    "SCORER_TASK_TIME_PER_AUDIO_S per second of audio): raise them for files like this one"
)


def over_time_limit(exc: BaseException) -> bool:
    """Celery's soft time limit, raised in the task by the pool's signal: not the file's fault."""
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(exc, SoftTimeLimitExceeded)


def item_error(doing: str, exc: BaseException) -> str:
    """A row's reason for an exception at the item boundary."""
    return OVER_TIME_LIMIT if over_time_limit(exc) else f"{doing}: {one_line(exc)}"


def preprocess(rt: Runtime, items: list[Item]) -> list[Preprocessed]:
    """Decode each item (a bad one fails alone), then separate and featurise the rest as a batch.

    Any exception of one item fails that item with its reason and never the run: a batch that
    raises (a file too short to window, out of memory) is retried item by item, so only the
    item that raises again fails."""
    out: dict[str, Preprocessed] = {}
    good: list[tuple[Item, Audio]] = []
    for item in items:
        try:
            audio = load(rt, item.sha256, item.data)  # a long file comes back featurised
        except InputError as exc:
            out[item.sha256] = Preprocessed(item.sha256, error=str(exc))
            continue
        except Exception as exc:  # the item boundary, MemoryError included
            log.exception("decoding %s failed", item.name)
            out[item.sha256] = Preprocessed(item.sha256, error=item_error("cannot decode", exc))
            continue
        out[item.sha256] = Preprocessed(
            item.sha256,
            audio_info={
                "duration_s": audio.duration_s,
                "sample_rate": audio.sample_rate,
                "channels": audio.channels,
            },
        )
        if isinstance(audio, Featurised):
            out[item.sha256].windows, out[item.sha256].voice = audio.windows, audio.voice
        else:
            good.append((item, audio))
    if not good:
        return [out[i.sha256] for i in items]
    try:
        feats = featurize_batch(rt, [a for _, a in good])
    except Exception as exc:  # out of memory, or one item that cannot be windowed
        if over_time_limit(exc):  # no time left to retry item by item
            for item, _ in good:
                out[item.sha256] = Preprocessed(item.sha256, error=OVER_TIME_LIMIT)
            return [out[i.sha256] for i in items]
        if len(good) > 1:
            log.info("featurising a batch of %d failed (%s); item by item", len(good), exc)
        for item, audio in good:
            try:
                ((out[item.sha256].windows, out[item.sha256].voice),) = featurize_batch(rt, [audio])
            except Exception as one:
                out[item.sha256] = Preprocessed(
                    item.sha256, error=item_error("cannot featurise", one)
                )
    else:
        for (item, _), (windows, voice) in zip(good, feats, strict=True):
            out[item.sha256].windows, out[item.sha256].voice = windows, voice
    return [out[i.sha256] for i in items]


def featurize_batch(rt: Runtime, audios: list[Audio]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Separate and featurise `audios` with the runtime's front end and separator: log-mel
    windows, and their voice features where SCORER_VOICE_FEATURES asks for them."""
    from pipeline.preprocess import featurize_all

    return featurize_all(
        audios,
        rt.frontend,
        rt.separator,
        device=rt.device,
        min_tail_s=rt.settings.min_tail_s,
        voice=rt.voice,
    )


def save_preprocessed(
    session: Session,
    frontend_version: str,
    results: list[Preprocessed],
    voice_version: str | None = None,
) -> None:
    """Features rows (log-mel, and voice features under `voice_version` where computed) +
    status `preprocessed`, or status `failed` with the one-line reason."""
    for r in results:
        if r.error is not None:
            queries.mark_failed(session, r.sha256, r.error)
            continue
        assert r.windows is not None
        queries.store_features(session, r.sha256, frontend_version, r.windows)
        if r.voice is not None and voice_version is not None:
            queries.store_features(session, r.sha256, voice_version, r.voice[:, None, :])
        queries.set_status(
            session,
            [r.sha256],
            SnippetStatus.preprocessed,
            attempts=0,
            n_windows=int(r.windows.shape[0]),
            **(r.audio_info or {}),
        )


MIN_VOICED_FRACTION = 0.3
"""A file is judged by its voiced windows only when at least this share of them has voice."""


def file_verdict(window_probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """Combine a file's (W, C) window probabilities into one (C,) verdict.

    Mean of the windows that contain voice (P(none) < 0.5) when the class set has `none` and at
    least ``MIN_VOICED_FRACTION`` of the windows have voice; otherwise the mean of all windows. A
    song with a long instrumental intro is then judged by its sung parts, and an instrumental
    file stays `none` even when a window or two of it look sung (without the fraction, one
    false window decided a whole instrumental: docs/RESULTS.md, per-song verdicts).
    """
    if "none" in classes and window_probs.shape[0] > 1:
        voiced = window_probs[:, classes.index("none")] < 0.5
        if voiced.any() and voiced.mean() >= MIN_VOICED_FRACTION:
            return window_probs[voiced].mean(axis=0)
    return window_probs.mean(axis=0)


def _entropy(p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0)
    return float(-(p * np.log(p)).sum())


def predict_windows(
    ensemble: Ensemble, windows: np.ndarray, batch_size: int, voice: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """(N, 299, 40) float16 windows -> the ensemble's summary per window, in batches, as numpy.
    `voice` (N, D): the windows' voice features for a model with a voice head (NaN rows where
    a window has none)."""
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch_size]))
        vb = None if voice is None else torch.from_numpy(voice[start : start + batch_size])
        parts.append({k: v.cpu() for k, v in ensemble.predict(x, voice=vb).items()})
    return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}


def voice_windows(
    session: Session,
    ensemble: Ensemble,
    order: list[str],
    feats: dict[str, np.ndarray],
    frontend_version: str | None = None,
) -> np.ndarray | None:
    """The voice features of `order`'s windows, stacked like their log-mel, for a model with a
    voice head; NaN rows for snippets featurised without them (those are judged by the members
    alone, and the log says how many). None for a model without a head. `frontend_version`:
    the log-mel's, when not the model's own (the fast profile's segment): the head's voice
    config on those vocals."""
    version = ensemble.voice_version
    if version is None or ensemble.voice_head is None:
        return None
    if frontend_version is not None:
        from pipeline.voice import VoiceConfig

        version = VoiceConfig(**ensemble.meta["voice"]["config"]).version(frontend_version)
    found = queries.load_features(session, order, version)
    dim = ensemble.voice_head.mean.shape[0]
    rows, missing = [], 0
    for sha in order:
        w = feats[sha].shape[0]
        v = found.get(sha)
        if v is None or v.shape[0] != w or v.shape[-1] != dim:
            rows.append(np.full((w, dim), np.nan, dtype=np.float32))
            missing += 1
        else:
            rows.append(v.reshape(w, dim).astype(np.float32))
    if missing:
        log.warning(
            "%d of %d snippets have no voice features %s (featurised before "
            "SCORER_VOICE_FEATURES was on): scored by the members alone",
            missing, len(order), version,
        )  # fmt: skip
    return np.concatenate(rows, axis=0)


def score(session: Session, rt: Runtime, model: ModelVersion, shas: list[str]) -> dict[str, str]:
    """Run the ensemble over the windows of `shas`, upsert predictions, mark them scored.

    Returns {sha: file label}. Shas without features of the runtime's front end (the model's,
    or its variant under the fast profile: runtime.scoring_frontend) are left alone.
    """
    version = rt.frontend.version
    feats = queries.load_features(session, shas, version)
    if not feats:
        return {}
    order = [s for s in shas if s in feats]
    stacked = np.concatenate([feats[s] for s in order], axis=0)
    ensemble = rt.ensemble(model.weights_uri)
    other = None if version == model.frontend_version else version
    voice = voice_windows(session, ensemble, order, feats, other)
    summary = predict_windows(ensemble, stacked, batch_size=rt.settings.infer_batch, voice=voice)
    classes = list(model.classes)
    hop_s = rt.frontend.window_samples / rt.frontend.sample_rate
    # Whole-batch conversions to Python values (one .tolist() each), not float() per value.
    proba = np.round(summary["proba"].astype(np.float64), 6).tolist()
    label = [classes[k] for k in summary["label_idx"].tolist()]
    confidence = summary["confidence"].tolist()
    disagreement = summary["disagreement"].tolist()
    entropy = summary["entropy"].tolist()
    rows: list[dict] = []
    labels: dict[str, str] = {}
    offset = 0
    for sha in order:
        w = feats[sha].shape[0]
        rows.extend(
            {
                "sha256": sha,
                "window_index": i,
                "start_s": i * hop_s,
                "model_version_id": model.id,
                "probabilities": proba[offset + i],
                "label": label[offset + i],
                "confidence": confidence[offset + i],
                "disagreement": disagreement[offset + i],
                "entropy": entropy[offset + i],
            }
            for i in range(w)
        )
        verdict = file_verdict(summary["proba"][offset : offset + w], classes)
        k = int(verdict.argmax())
        labels[sha] = classes[k]
        rows.append(
            {
                "sha256": sha,
                "window_index": FILE_WINDOW,
                "start_s": 0.0,
                "model_version_id": model.id,
                "probabilities": np.round(verdict.astype(np.float64), 6).tolist(),
                "label": classes[k],
                "confidence": float(verdict[k]),
                "disagreement": float(summary["disagreement"][offset : offset + w].mean()),
                "entropy": _entropy(verdict),
            }
        )
        offset += w
    queries.upsert_predictions(session, rows)
    queries.set_status(session, order, SnippetStatus.scored, attempts=0)
    return labels
