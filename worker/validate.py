"""Checks on every message a worker takes, before any work is done for it.

A message is data from the network: anyone who can write to the broker can send one. The
front-end dict in a preprocess message sizes every buffer the worker allocates (window length,
FFT size, mel bands, frames, Spleeter segment), so an unchecked one could make a worker allocate
without bound. Only known keys with the right types inside fixed ranges pass; anything else
fails that one item with a one-line reason, and the worker goes on.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.models import SnippetStatus
from scorer.settings import Settings

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"[0-9a-f]{64}")
MAX_NAME_CHARS = 4096

# field: (type, lowest, highest). Far wider than any sensible front end, small enough that the
# largest one still fits in a worker's memory.
FRONTEND_LIMITS: dict[str, tuple[type, float, float]] = {
    "sample_rate": (int, 4_000, 96_000),
    "window_samples": (int, 1_000, 96_000 * 30),  # at most 30 s per window
    "frame_length": (int, 16, 16_384),
    "hop_length": (int, 1, 16_384),
    "n_fft": (int, 16, 16_384),
    "n_mels": (int, 1, 512),
    "f_min": (float, 0.0, 48_000.0),
    "f_max": (float, 1.0, 48_000.0),
    "preemphasis": (float, 0.0, 1.0),
    "n_frames": (int, 1, 20_000),
    "separation": (bool, 0, 1),
    "spleeter_frames": (int, 0, 4_096),  # 0 = by need (at most 512 per segment)
    "layout": (str, 0, 0),
    "spleeter_bf16": (bool, 0, 1),  # optional: absent = False (dicts made before it existed)
}
OPTIONAL_FRONTEND_KEYS = {"spleeter_bf16"}
LAYOUTS = ("frames_mels",)
MAX_FEATURE_VALUES = 4_000_000
"""n_frames x n_mels of one window (the reference is 299 x 40 = 11,960)."""


class InvalidMessage(ValueError):
    """A message no worker should act on; the text is the item's one-line failure reason."""


def check_sha(sha: Any) -> str:
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
        raise InvalidMessage(f"invalid message: sha256 must be 64 hex digits, got {sha!r:.80}")
    return sha


def check_frontend(frontend: Any) -> dict[str, Any] | None:
    """The front-end dict of a preprocess message (None: the worker uses the active model's)."""
    if frontend is None:
        return None
    if not isinstance(frontend, dict):
        raise InvalidMessage(f"invalid front end: a dict expected, got {type(frontend).__name__}")
    unknown = sorted(map(str, set(frontend) - set(FRONTEND_LIMITS)))
    if unknown:
        raise InvalidMessage(f"invalid front end: unknown keys {', '.join(unknown)[:200]}")
    missing = sorted(set(FRONTEND_LIMITS) - OPTIONAL_FRONTEND_KEYS - set(frontend))
    if missing:
        raise InvalidMessage(f"invalid front end: missing keys {', '.join(missing)}")
    for key, (kind, low, high) in FRONTEND_LIMITS.items():
        if key not in frontend:
            continue
        value = frontend[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise InvalidMessage(f"invalid front end: {key} must be {kind.__name__}")
        if kind in (int, float) and not low <= value <= high:
            raise InvalidMessage(f"invalid front end: {key}={value} outside [{low}, {high}]")
    f = frontend
    if f["layout"] not in LAYOUTS:
        raise InvalidMessage(f"invalid front end: layout must be one of {', '.join(LAYOUTS)}")
    if not f["hop_length"] <= f["frame_length"] <= f["n_fft"]:
        raise InvalidMessage("invalid front end: needs hop_length <= frame_length <= n_fft")
    if not f["f_min"] < f["f_max"] <= f["sample_rate"] / 2:
        raise InvalidMessage("invalid front end: needs f_min < f_max <= sample_rate / 2")
    if f["spleeter_frames"] % 64:
        raise InvalidMessage("invalid front end: spleeter_frames must be a multiple of 64 or 0")
    if f["n_frames"] * f["n_mels"] > MAX_FEATURE_VALUES:
        raise InvalidMessage(f"invalid front end: n_frames x n_mels > {MAX_FEATURE_VALUES}")
    FrontendConfig.from_dict(f)  # every key is a field: cannot fail after the checks above
    return dict(f)


MB = 1 << 20
PATH_KEYS = {"path", "size"}


def check_audio(data: Any, max_message_mb: float, shared_input: bool, max_file_mb: float) -> None:
    """The audio of a preprocess message: bytes up to SCORER_MAX_MESSAGE_MB, or (only where
    this worker sees the producer's files, SCORER_SHARED_INPUT) {"path": absolute path,
    "size": bytes up to SCORER_MAX_FILE_MB}, whose bytes the worker checks against the sha."""
    if isinstance(data, bytes):
        if len(data) > max_message_mb * MB:
            raise InvalidMessage(
                f"invalid message: {len(data) / MB:.4g} MB of audio > {max_message_mb:g} MB "
                "(SCORER_MAX_MESSAGE_MB)"
            )
        return
    if not isinstance(data, dict):
        raise InvalidMessage(
            f"invalid message: audio must be bytes or {{path, size}}, got {type(data).__name__}"
        )
    if set(data) != PATH_KEYS:
        raise InvalidMessage("invalid message: audio by path takes exactly the keys path, size")
    if not shared_input:
        raise InvalidMessage(
            "audio sent as a path, but this worker does not share the producer's files "
            "(SCORER_SHARED_INPUT is off here)"
        )
    path, size = data["path"], data["size"]
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or "\0" in path
        or len(path) > MAX_NAME_CHARS
    ):
        raise InvalidMessage(f"invalid message: path must be absolute, <= {MAX_NAME_CHARS} chars")
    if type(size) is not int or not 0 <= size <= max_file_mb * MB:
        raise InvalidMessage(
            f"invalid message: size must be 0 to {max_file_mb:g} MB (SCORER_MAX_FILE_MB)"
        )


def check_preprocess(
    sha: Any,
    data: Any,
    name: Any,
    frontend: Any,
    *,
    max_message_mb: float = 32.0,
    shared_input: bool = False,
    max_file_mb: float = 2048.0,
) -> None:
    """Raise InvalidMessage unless (sha, data, name, frontend) is a well-formed preprocess
    message. The sha is checked first, so a caller can still fail that item's row."""
    check_sha(sha)
    check_audio(data, max_message_mb, shared_input, max_file_mb)
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise InvalidMessage(f"invalid message: name must be a string of <= {MAX_NAME_CHARS}")
    check_frontend(frontend)


def check_infer(args: Any, kwargs: Any) -> str:
    """The sha of a well-formed infer message ((sha,), {"after": token or None})."""
    if not isinstance(args, list | tuple) or len(args) != 1:
        raise InvalidMessage("invalid message: infer takes exactly one argument, the sha256")
    kwargs = kwargs or {}
    if not isinstance(kwargs, dict) or set(kwargs) - {"after"}:
        raise InvalidMessage("invalid message: infer takes only the keyword 'after'")
    after = kwargs.get("after")
    if after is not None and (not isinstance(after, str) or len(after) > 255):
        raise InvalidMessage("invalid message: 'after' must be a delivery token")
    return check_sha(args[0])


def rejected_preprocess(
    sessions: sessionmaker[Session],
    sha: Any,
    data: Any,
    name: Any,
    frontend: Any,
    settings: Settings,
) -> bool:
    """True when the preprocess message is invalid: logged, and its snippet (if the sha is one
    and the row still waits for preprocessing) failed with the reason. The task then returns.
    `settings`: this worker's (message cap, shared input, file cap)."""
    try:
        check_preprocess(
            sha,
            data,
            name,
            frontend,
            max_message_mb=settings.max_message_mb,
            shared_input=settings.shared_input,
            max_file_mb=settings.max_file_mb,
        )
    except InvalidMessage as exc:
        _fail(sessions, sha, str(exc), SnippetStatus.queued)
        return True
    return False


def accepted_infer(sessions: sessionmaker[Session], requests: list[Any]) -> list[Any]:
    """The well-formed requests of an infer batch; the others are logged and their snippets
    (where the sha is one and the row waits for inference) failed with the reason."""
    good = []
    for r in requests:
        try:
            check_infer(r.args, r.kwargs)
        except InvalidMessage as exc:
            sha = r.args[0] if isinstance(r.args, list | tuple) and r.args else None
            _fail(sessions, sha, str(exc), SnippetStatus.preprocessed)
        else:
            good.append(r)
    return good


def _fail(sessions: sessionmaker[Session], sha: Any, reason: str, waiting: SnippetStatus) -> None:
    log.error("rejected a message (%s): %s", str(sha)[:12], reason)
    if isinstance(sha, str) and SHA_RE.fullmatch(sha):
        with sessions.begin() as s:
            queries.set_status(s, [sha], SnippetStatus.failed, error=reason, only_from=waiting)
