"""Audio for the review page, by snippet only: the browser never names a file.

The original is read from a path the database knows for the snippet's sha256 (`source_paths`,
then `snippets.source_path`) and only when that file's bytes still hash to the sha256, so no
request can make the server read any other file. Vocals are separated on demand with the
project's separator (what the model heard: Spleeter 2-stem vocals, mono at the front end's
16 kHz) and cached as WAV under the data dir.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from scorer.errors import ScorerError
from scorer.settings import Settings

HASH_CHUNK = 1 << 20
VOCALS_MAX_S = 900.0
"""Longest file whose vocals the page separates: it is decoded and separated whole on the
request (scoring takes long files in blocks; a page request should not hold gigabytes)."""

MEDIA_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
}


class AudioUnavailable(ScorerError):
    """No readable file holds the snippet's content any more (moved, changed, unmounted)."""


class TooLong(ScorerError):
    """A file longer than VOCALS_MAX_S: no vocals on the page (its windows still play)."""


@dataclass(frozen=True)
class Verified:
    """A file whose content was checked against the snippet's sha256, and when."""

    path: Path
    size: int
    mtime_ns: int


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


class OriginalFiles:
    """sha256 -> a verified file, remembered while its size and mtime stay the same (so a
    long file is hashed once, not on every range request of the audio element)."""

    def __init__(self) -> None:
        self._known: dict[str, Verified] = {}
        self._lock = threading.Lock()

    def find(self, sha: str, candidates: list[str]) -> Verified:
        """The first of `candidates` (paths from the database) whose bytes hash to `sha`."""
        with self._lock:
            known = self._known.get(sha)
        if known is not None and _unchanged(known):
            return known
        for name in candidates:
            path = Path(name)
            try:
                st = path.stat()
                if not stat.S_ISREG(st.st_mode) or file_sha256(path) != sha:
                    continue
            except OSError:
                continue
            found = Verified(path, st.st_size, st.st_mtime_ns)
            with self._lock:
                self._known[sha] = found
            return found
        raise AudioUnavailable(
            "none of the paths this content was seen at holds it any more "
            f"({len(candidates)} tried)"
        )


def _unchanged(v: Verified) -> bool:
    try:
        st = v.path.stat()
    except OSError:
        return False
    return st.st_size == v.size and st.st_mtime_ns == v.mtime_ns


class Vocals:
    """Separated vocals per (sha256, front end), computed once and kept as 16-bit WAV files in
    `<data dir>/review/vocals/`. One separation at a time: it is the costly step (about 0.15 CPU
    seconds per second of audio) and the separator is loaded once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.data_dir / "review" / "vocals"
        self._lock = threading.Lock()

    def path_for(self, sha: str, frontend: dict) -> Path:
        from pipeline.frontend import FrontendConfig

        cfg = replace(FrontendConfig.from_dict(frontend), separation=True)
        return self.folder / f"{sha}-{cfg.version}.wav"

    def get(self, sha: str, original: Path, frontend: dict) -> Path:
        """The cached vocals of `original` (whose content is `sha`), separated now if new."""
        target = self.path_for(sha, frontend)
        if target.exists():
            return target
        with self._lock:
            if target.exists():  # another request separated it while this one waited
                return target
            self._separate(original, frontend, target)
        return target

    def _separate(self, original: Path, frontend: dict, target: Path) -> None:
        import soundfile as sf

        from pipeline.decode import decode
        from pipeline.frontend import FrontendConfig
        from pipeline.preprocess import vocals_mono
        from worker.runtime import Runtime, configure_threads

        seconds = sf.info(str(original)).duration
        if seconds > VOCALS_MAX_S:
            raise TooLong(
                f"{seconds:.0f} s is too long to separate on the page (at most "
                f"{VOCALS_MAX_S:.0f} s); its windows play from the original"
            )
        cfg = replace(FrontendConfig.from_dict(frontend), separation=True)
        runtime = Runtime(self.settings, frontend_override=cfg)
        configure_threads(self.settings)
        audio = decode(
            original.read_bytes(), name=original.name, max_duration_s=self.settings.max_duration_s
        )
        (mono,) = vocals_mono([audio], cfg, runtime.separator, runtime.device)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        sf.write(tmp, mono.clip(-1.0, 1.0), cfg.sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, target)
