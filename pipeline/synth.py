"""Deterministic synthetic song snippets for the demo and the tests: no network, no data files.

The classifier sees Spleeter's vocals stem, so the voices must look like singing to a separator
trained on real music (formants, vibrato, syllables, breath, consonants) and the backing must look
like instruments (stable harmonic pitch, percussive decays). Everything is rendered in numpy at
22.05 kHz, which covers Spleeter's 0-11 kHz band at half the cost, then resampled with soxr.

A `Singer` and a `Backing` are fixed random parameter sets, so a data set has singer groups and
train/test can hold out whole singers and backing tracks. The voices come from `synth_voice`,
the backing from `synth_backing`; this module mixes them in one room and writes data sets.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import soundfile as sf
import soxr

from pipeline.synth_backing import STYLES, Backing, Style, make_backing, render_backing
from pipeline.synth_dsp import MAJOR, MINOR
from pipeline.synth_voice import Gender, Singer, harmony, make_singer, melody, render_voice

__all__ = [
    "LABELS",
    "RENDER_SR",
    "STYLES",
    "Backing",
    "Gender",
    "Label",
    "Singer",
    "Snippet",
    "Style",
    "generate_dataset",
    "make_backing",
    "make_singer",
    "make_snippet",
    "render_snippet",
]

Label = Literal["none", "male", "female", "multi"]
LABELS: tuple[Label, ...] = get_args(Label)

RENDER_SR = 22_050


@dataclass
class Snippet:
    """A rendered snippet and its parts, all at the requested rate and the same final gain.

    `mix`, `vocals`, `accompaniment`: (2, n) float32; `vocals` is all zeros for `none`.
    `voices`: one dry mono (n,) float32 track per singer, for pitch checks.
    Rendered with `stems=False`, the parts are empty: (2, 0) arrays and no voices.
    """

    label: Label
    mix: np.ndarray
    vocals: np.ndarray
    accompaniment: np.ndarray
    voices: list[np.ndarray]
    singers: tuple[Singer, ...]
    backing: Backing
    group: str = field(default="")


# ---------------------------------------------------------------- snippets and data sets

_PAIRS: tuple[tuple[Gender, Gender], ...] = (
    ("male", "female"),
    ("male", "male"),
    ("female", "female"),
)


def _room(rng: np.random.Generator, sr: int) -> np.ndarray:
    """One shared room for all parts: a (2, L) decorrelated stereo tail, wet level included."""
    rt60 = rng.uniform(0.3, 1.2)
    length = int(min(rt60, 1.0) * sr)
    t = np.arange(length) / sr
    ir = rng.normal(0, 1, (2, length)) * np.exp(-6.9 * t / rt60)
    ir[:, : int(0.012 * sr)] = 0.0  # pre-delay
    ir = _shape_noise_2d(ir, sr)
    ir /= np.sqrt(np.sum(ir**2, axis=1, keepdims=True)) + 1e-9
    return ir * 10 ** (rng.uniform(-14, -6) / 20)


def _with_reverb(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """(..., 2, n) dry -> dry + wet, truncated to n."""
    n = x.shape[-1]
    size = 1 << int(np.ceil(np.log2(n + ir.shape[-1])))
    return x + np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[..., :n]


def _shape_noise_2d(ir: np.ndarray, sr: int) -> np.ndarray:
    """Air damping of a reverb tail: a gentle low-pass above 4 kHz."""
    spec = np.fft.rfft(ir, axis=1)
    f = np.fft.rfftfreq(ir.shape[1], 1 / sr)
    return np.fft.irfft(spec / (1 + (f / 4000.0) ** 2), ir.shape[1], axis=1)


def _pick_singers(
    label: Label, rng: np.random.Generator, singers: Sequence[Singer] | None
) -> tuple[Singer, ...]:
    """Singers for a label from a pool (or freshly drawn), two distinct ones for `multi`."""
    if label == "none":
        return ()
    pool = list(singers) if singers else []
    by = {g: [s for s in pool if s.gender == g] for g in ("male", "female")}
    if label in ("male", "female"):
        cands = by[label] or [make_singer(rng, label, f"{label[0]}-new")]
        return (cands[int(rng.integers(len(cands)))],)
    ok = [p for p in _PAIRS if len(by[p[0]]) >= (2 if p[0] == p[1] else 1) <= len(by[p[1]])]
    if not ok:
        a, b = make_singer(rng, "male", "m-new"), make_singer(rng, "female", "f-new")
    else:
        weights = np.array([0.5 if p[0] != p[1] else 0.25 for p in ok])
        ga, gb = ok[int(rng.choice(len(ok), p=weights / weights.sum()))]
        a = by[ga][int(rng.integers(len(by[ga])))]
        rest = [s for s in by[gb] if s.id != a.id]
        b = rest[int(rng.integers(len(rest)))]
    return (a, b) if rng.random() < 0.5 else (b, a)


def render_snippet(
    label: Label,
    rng: np.random.Generator,
    sr: int = 44_100,
    seconds: float = 3.0,
    singers: Sequence[Singer] | None = None,
    backings: Sequence[Backing] | None = None,
    stems: bool = True,
) -> Snippet:
    """One labelled snippet with its stems; all randomness comes from `rng` (deterministic).

    `singers` / `backings` are the pools to draw from (None: draw fresh ones), which is how a data
    set keeps its train and test singers apart. Voice-to-backing ratio -3..+6 dB; final RMS
    -26..-16 dBFS with peaks below -1 dBFS, so 16-bit files never clip. `stems=False` skips
    the parts (empty arrays) for speed; the mix is identical either way.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    r_sr = min(sr, RENDER_SR)
    n_r, n = round(seconds * r_sr), round(seconds * sr)
    bt = backings[int(rng.integers(len(backings)))] if backings else make_backing(rng, "bt-new")
    chosen = _pick_singers(label, rng, singers)
    t0 = float(rng.uniform(0, len(bt.progression) * 240.0 / bt.tempo))
    acc = render_backing(bt, rng, r_sr, n_r, t0)
    scale = MINOR if bt.minor else MAJOR
    tonic = 24 + bt.key_root
    dry: list[np.ndarray] = []
    vocals = np.zeros((2, n_r))
    if chosen:
        lead_notes = melody(rng, seconds, chosen[0], tonic, scale)
        for i, s in enumerate(chosen):
            notes = lead_notes if i == 0 else harmony(rng, lead_notes, chosen[0], s, tonic, scale)
            v = render_voice(rng, s, notes, tonic, scale, r_sr, n_r)
            v *= 10 ** (rng.uniform(-4, 4) / 20) if i else 1.0
            pan = 0.5 + (rng.uniform(-0.3, 0.3) if len(chosen) > 1 else rng.uniform(-0.08, 0.08))
            vocals += np.stack([v * np.cos(pan * np.pi / 2), v * np.sin(pan * np.pi / 2)])
            dry.append(v)
        ratio = 10 ** (rng.uniform(-3, 6) / 20) / (np.sqrt(np.mean(vocals**2)) + 1e-9)
        vocals *= ratio
        dry = [v * ratio for v in dry]
    ir = _room(rng, r_sr)
    # The mix is made the same way with or without stems, so both paths give the same bytes.
    tracks = [_with_reverb(vocals + acc, ir)]
    if stems:
        tracks += [_with_reverb(vocals, ir), _with_reverb(acc, ir), *(d[None] for d in dry)]
    if r_sr != sr:
        tracks = [soxr.resample(x.T, r_sr, sr).T for x in tracks]
    tracks = [np.pad(x, ((0, 0), (0, max(0, n - x.shape[1]))))[:, :n] for x in tracks]
    mix = tracks[0]
    gain = 10 ** (rng.uniform(-26, -16) / 20) / (np.sqrt(np.mean(mix**2)) + 1e-12)
    gain = min(gain, 0.89 / (np.max(np.abs(mix)) + 1e-12))
    group = bt.id if label == "none" else "+".join(sorted(s.id for s in chosen))
    empty = np.zeros((2, 0), dtype=np.float32)
    return Snippet(
        label=label,
        mix=(mix * gain).astype(np.float32),
        vocals=(tracks[1] * gain).astype(np.float32) if stems else empty,
        accompaniment=(tracks[2] * gain).astype(np.float32) if stems else empty,
        voices=[(x[0] * gain).astype(np.float32) for x in tracks[3:]],
        singers=chosen,
        backing=bt,
        group=group,
    )


def make_snippet(
    label: Label,
    rng: np.random.Generator,
    sr: int = 44_100,
    seconds: float = 3.0,
    singers: Sequence[Singer] | None = None,
    backings: Sequence[Backing] | None = None,
) -> np.ndarray:
    """The mixture only: (2, round(seconds * sr)) float32 stereo in [-0.89, 0.89]."""
    return render_snippet(label, rng, sr, seconds, singers, backings, stems=False).mix


def _pools(rng: np.random.Generator, count: int, start: int) -> tuple[list[Singer], list[Backing]]:
    """Singers and backing tracks for one split, about 5 snippets per singer and class."""
    k = int(np.clip(np.ceil(count / 5), 2, 40))
    singers = [make_singer(rng, "male", f"m{start + i:03d}") for i in range(k)]
    singers += [make_singer(rng, "female", f"f{start + i:03d}") for i in range(k)]
    nb = int(np.clip(np.ceil(count / 3), 2, 60))
    backings = [make_backing(rng, f"bt{start + i:03d}") for i in range(nb)]
    return singers, backings


def generate_dataset(
    out_dir: Path,
    n_per_class: int,
    seed: int = 0,
    test_fraction: float = 0.25,
    fmt: Literal["wav", "flac"] = "wav",
    sr: int = 44_100,
    seconds: float = 3.0,
) -> dict[str, Path]:
    """Write `<split>/<label>/<label>_NNNN.<fmt>` (16-bit stereo) and `<split>/labels.csv`.

    The test split's singers and backing tracks are disjoint from train's, so test accuracy
    measures generalisation to new voices. CSV columns: file (relative to the CSV), label,
    class_idx, group (singer id, "a+b" for multi, backing id for none). Byte-identical output
    for a given seed. Returns {split: csv path}; a split with no snippets is not written.
    """
    if fmt not in ("wav", "flac"):
        raise ValueError(f"fmt must be 'wav' or 'flac', got {fmt!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(n_per_class * test_fraction)
    counts = {"train": n_per_class - n_test, "test": n_test}
    pool_rng = np.random.default_rng([seed, 0])
    written: dict[str, Path] = {}
    start = 0
    for split_idx, (split, count) in enumerate(counts.items(), start=1):
        if count <= 0:
            continue
        singers, backings = _pools(pool_rng, count, start)
        start += 100
        males = [s for s in singers if s.gender == "male"]
        females = [s for s in singers if s.gender == "female"]
        rows = []
        for class_idx, label in enumerate(LABELS):
            folder = Path(out_dir) / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_idx, class_idx, i])
                pool: Sequence[Singer] = singers
                if label == "male":
                    pool = [males[i % len(males)]]
                elif label == "female":
                    pool = [females[i % len(females)]]
                snip = render_snippet(label, rng, sr, seconds, pool, backings, stems=False)
                name = f"{label}/{label}_{i:04d}.{fmt}"
                pcm = np.round(snip.mix.T * 32767.0).astype(np.int16)
                sf.write(
                    Path(out_dir) / split / name, pcm, sr, subtype="PCM_16", format=fmt.upper()
                )
                rows.append((name, label, class_idx, snip.group))
        csv_path = Path(out_dir) / split / "labels.csv"
        with csv_path.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("file", "label", "class_idx", "group"))
            writer.writerows(rows)
        written[split] = csv_path
    return written
