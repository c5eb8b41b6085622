"""The front end's parameters, and the version string that keys cached features.

Every number that changes what a feature means is a field here; the version is a hash of all of
them, so a cache hit is exact and a model knows which features it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FrontendConfig:
    """../shared/FRONTEND.md as data. Defaults are the reference recipe."""

    sample_rate: int = 16_000
    window_samples: int = 48_000  # 3 s at 16 kHz
    frame_length: int = 400
    hop_length: int = 160
    n_fft: int = 1024
    n_mels: int = 40
    f_min: float = 0.0
    f_max: float = 8000.0
    preemphasis: float = 0.97
    n_frames: int = 299
    separation: bool = True  # Spleeter 2-stem vocals first
    # Spleeter segment length T (512 = the official output); 0 = by need, per input
    # (pipeline.spleeter.segment_frames: 192 for a 3 s clip), its own version like any T.
    spleeter_frames: int = 512
    layout: str = "frames_mels"  # features are (n_frames, n_mels) = (299, 40)
    # Spleeter's U-Nets under bf16 autocast (pipeline.spleeter.Separator(bf16=True)): another
    # output, so another version; left out of the dict when False, so every version made before
    # this field existed (models and caches on disk are keyed by it) stays the same.
    spleeter_bf16: bool = False

    @property
    def version(self) -> str:
        """Short stable hash of every field, e.g. ``fe-3f2a9c1b``."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return "fe-" + hashlib.sha256(blob).hexdigest()[:8]

    def to_dict(self) -> dict:
        """The fields, without `spleeter_bf16` when it is False (its default before it existed)."""
        d = asdict(self)
        if not d["spleeter_bf16"]:
            del d["spleeter_bf16"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FrontendConfig:
        return cls(**d)
