"""Deterministic synthetic song snippets for the demo and the tests: no network, no data files.

The classifier sees Spleeter's vocals stem, so the voices must look like singing to a separator
trained on real music (formants, vibrato, syllables, breath, consonants) and the backing must look
like instruments (stable harmonic pitch, percussive decays). Everything is rendered in numpy at
22.05 kHz, which covers Spleeter's 0-11 kHz band at half the cost, then resampled with soxr.

A `Singer` and a `Backing` are fixed random parameter sets, so a data set has singer groups and
train/test can hold out whole singers and backing tracks.
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

Label = Literal["none", "male", "female", "multi"]
LABELS: tuple[Label, ...] = get_args(Label)
Gender = Literal["male", "female"]
Style = Literal["ballad", "pop", "electro", "acoustic"]
STYLES: tuple[Style, ...] = get_args(Style)

RENDER_SR = 22_050
_HOP_C = 64  # control-rate hop in samples (~2.9 ms at 22.05 kHz)
_F0_RANGE = {"male": (85.0, 180.0), "female": (180.0, 380.0)}  # Hz, hard bounds of the sung notes
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
# Formants F1-F4 (Hz) and bandwidths of an adult male vocal tract; other singers scale them.
_VOWELS = {
    "a": ((730, 1090, 2440, 3400), (80, 90, 120, 180)),
    "e": ((530, 1840, 2480, 3500), (60, 100, 120, 180)),
    "i": ((300, 2250, 3000, 3700), (50, 100, 140, 200)),
    "o": ((570, 840, 2410, 3400), (70, 80, 120, 180)),
    "u": ((320, 870, 2240, 3300), (50, 80, 120, 180)),
    "m": ((250, 1100, 2300, 3300), (120, 300, 300, 300)),  # nasal murmur of an /m/ onset
}
_ONSETS = ("", "", "s", "sh", "t", "k", "m", "h")


@dataclass(frozen=True)
class Singer:
    """One voice's fixed traits; the snippets of a singer form one group for held-out splits."""

    id: str
    gender: Gender
    f0_center: float  # Hz, middle of the sung range
    formant_scale: float  # vocal-tract length factor on the vowel table
    vibrato_rate: float  # Hz
    vibrato_depth: float  # semitones, peak
    breathiness: float  # aspiration noise RMS / voiced source RMS
    open_quotient: float  # open share of the glottal cycle: higher = softer, darker
    jitter: float  # semitones of fast F0 noise
    shimmer: float  # relative per-cycle amplitude noise
    tilt: float  # extra spectral slope above 1 kHz, dB per octave
    glide: float  # portamento time, s


def make_singer(rng: np.random.Generator, gender: Gender, singer_id: str) -> Singer:
    """Draw a singer; the gender ranges overlap only at their edges, as in real voices."""
    male = gender == "male"
    lo, hi = (100.0, 145.0) if male else (215.0, 320.0)
    return Singer(
        id=singer_id,
        gender=gender,
        f0_center=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
        formant_scale=float(rng.uniform(0.94, 1.06) if male else rng.uniform(1.12, 1.24)),
        vibrato_rate=float(rng.uniform(4.8, 6.2)),
        vibrato_depth=float(rng.uniform(0.4, 0.9)),
        breathiness=float(rng.uniform(0.03, 0.15) if male else rng.uniform(0.05, 0.2)),
        open_quotient=float(rng.uniform(0.45, 0.65) if male else rng.uniform(0.55, 0.75)),
        jitter=float(rng.uniform(0.03, 0.1)),
        shimmer=float(rng.uniform(0.02, 0.08)),
        tilt=float(rng.uniform(-4.0, 0.0)),
        glide=float(rng.uniform(0.04, 0.1)),
    )


@dataclass(frozen=True)
class Backing:
    """A backing track: style, tempo, key and chords; timbres and mix derive from `seed`."""

    id: str
    style: Style
    tempo: float  # BPM, 4/4
    key_root: int  # pitch class 0-11
    minor: bool
    progression: tuple[int, ...]  # scale degree of each bar's chord
    lead: bool  # an instrumental melody over the chords, so `none` is not just "no melody"
    seed: int


_PROGRESSIONS = {
    False: ((0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 4, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4)),
    True: ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4), (0, 3, 6, 2)),
}
_TEMPI = {"ballad": (66, 92), "pop": (90, 132), "electro": (115, 130), "acoustic": (80, 120)}


def make_backing(rng: np.random.Generator, backing_id: str) -> Backing:
    """Draw a backing track; every style serves every class so style carries no label."""
    style = STYLES[int(rng.integers(len(STYLES)))]
    minor = bool(rng.random() < 0.4)
    progs = _PROGRESSIONS[minor]
    return Backing(
        id=backing_id,
        style=style,
        tempo=float(rng.uniform(*_TEMPI[style])),
        key_root=int(rng.integers(12)),
        minor=minor,
        progression=progs[int(rng.integers(len(progs)))],
        lead=bool(rng.random() < 0.3),
        seed=int(rng.integers(2**31)),
    )


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


# ---------------------------------------------------------------- helpers


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Hann moving average along axis 0 with edge padding (control-rate curves only)."""
    if width < 2:
        return x
    k = np.hanning(width + 2)[1:-1]
    k /= k.sum()
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (x.ndim - 1)
    xp = np.pad(x, pad, mode="edge")
    if x.ndim == 1:
        return np.convolve(xp, k, mode="valid")
    return np.stack([np.convolve(xp[:, j], k, mode="valid") for j in range(x.shape[1])], axis=1)


def _ffill(x: np.ndarray) -> np.ndarray:
    """Fill NaN rows with the previous valid row (leading NaNs with the first valid one)."""
    valid = ~np.isnan(x if x.ndim == 1 else x[:, 0])
    if not valid.any():
        return np.zeros_like(x)
    idx = np.maximum.accumulate(np.where(valid, np.arange(len(x)), 0))
    idx[: int(np.argmax(valid))] = int(np.argmax(valid))
    return x[idx]


def _shape_noise(noise: np.ndarray, sr: int, center: float, octaves: float) -> np.ndarray:
    """Filter noise with a log-frequency Gaussian band: fricatives, snares, hi-hats."""
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(len(noise), 1 / sr)
    gain = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / center) / octaves) ** 2)
    return np.fft.irfft(spec * gain, len(noise))


def _midi(degree: int, tonic: int, scale: Sequence[int]) -> int:
    return tonic + 12 * (degree // 7) + scale[degree % 7]


def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=float) - 69.0) / 12.0)


def _hz_to_midi(hz: float) -> float:
    return 69.0 + 12.0 * float(np.log2(hz / 440.0))


# ---------------------------------------------------------------- melody


@dataclass(frozen=True)
class _Note:
    start: float  # s from the snippet start
    end: float
    degree: int  # scale degree from the tonic
    vowel: str
    onset: str  # consonant before the vowel, "" for a plain vowel onset, "legato" for a melisma


def _singer_range(singer: Singer) -> tuple[float, float]:
    """Sung MIDI range: about +-6 semitones around the centre, inside the gender's bounds."""
    lo, hi = _F0_RANGE[singer.gender]
    c = _hz_to_midi(singer.f0_center)
    return max(_hz_to_midi(lo), c - 6), min(_hz_to_midi(hi), c + 6)


def _melody(
    rng: np.random.Generator, seconds: float, singer: Singer, tonic: int, scale: Sequence[int]
) -> list[_Note]:
    """A random walk on the key's scale in the singer's range: 0.2-0.6 s notes, one breath rest."""
    lo, hi = _singer_range(singer)
    allowed = [d for d in range(-40, 60) if lo <= _midi(d, tonic, scale) <= hi]
    d = allowed[len(allowed) // 2 + int(rng.integers(-2, 3))]
    notes: list[_Note] = []
    t = float(rng.uniform(-0.3, 0.25))
    rested = False
    while t < seconds:
        if notes and not rested and rng.random() < 0.12:
            t += float(rng.uniform(0.15, 0.35))
            rested = True
        dur = float(rng.uniform(0.2, 0.6))
        step = int(rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3]))
        if d + step not in allowed:
            step = -step
        d = d + step if d + step in allowed else d
        legato = bool(notes) and notes[-1].end == t and rng.random() < 0.3
        vowel = notes[-1].vowel if legato else "aeiou"[int(rng.integers(5))]
        onset = "legato" if legato else _ONSETS[int(rng.integers(len(_ONSETS)))]
        notes.append(_Note(t, t + dur, d, vowel, onset))
        t += dur
    return notes


def _harmony(
    rng: np.random.Generator,
    lead: list[_Note],
    lead_singer: Singer,
    singer: Singer,
    tonic: int,
    scale: Sequence[int],
) -> list[_Note]:
    """A second part on the same words: a third, fifth or sixth away (never a unison), or the
    same line in another octave when the genders differ."""
    if lead_singer.gender != singer.gender and rng.random() < 0.5:
        offset = 0
    else:
        offset = int(rng.choice([-5, -4, -2, 2, 4, 5]))
    lo, hi = _singer_range(singer)
    c = _hz_to_midi(singer.f0_center)
    degrees = np.array([n.degree + offset for n in lead])
    med = np.median([_midi(int(d), tonic, scale) for d in degrees])
    degrees += 7 * int(np.round((c - med) / 12))
    delay = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.3 else -1.0
    notes = []
    for n, d in zip(lead, degrees, strict=True):
        # Notes outside the singer's range move by octaves to the nearest fit; the pitch class,
        # hence the interval to the lead, stays.
        d = min(
            (int(d) + 7 * k for k in range(-3, 4)),
            key=lambda x: (
                max(lo - _midi(x, tonic, scale), _midi(x, tonic, scale) - hi, 0),
                abs(x - d),
            ),
        )
        if n.start >= delay:
            jit = float(rng.normal(0, 0.012))
            notes.append(_Note(n.start + jit, n.end + jit, d, n.vowel, n.onset))
    return notes


# ---------------------------------------------------------------- voice


def _glottal_derivative(frac: np.ndarray, oq: float) -> np.ndarray:
    """Rosenberg glottal-flow derivative per unit phase: lip radiation included, abrupt closure."""
    tp, tn = 0.6 * oq, 0.4 * oq
    out = np.zeros_like(frac)
    op = frac < tp
    cl = (frac >= tp) & (frac < tp + tn)
    out[op] = (np.pi / (2 * tp)) * np.sin(np.pi * frac[op] / tp)
    out[cl] = -(np.pi / (2 * tn)) * np.sin(np.pi * (frac[cl] - tp) / (2 * tn))
    return out


def _tract_filter(
    src: np.ndarray, formants: np.ndarray, bands: np.ndarray, tilt: float, sr: int
) -> np.ndarray:
    """Time-varying F1-F5 resonator cascade applied frame by frame (sqrt-Hann WOLA, 1024/512).

    formants, bands: control-rate (n_control, 5) Hz; resonators have unit gain at DC.
    """
    n_fft, hop = 1024, 512
    n = len(src)
    w = np.sqrt(np.hanning(n_fft + 1)[:-1])
    padded = np.pad(src, (n_fft, n_fft + hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    t_frames = frames.shape[0]
    spec = np.fft.rfft(frames * w, axis=1)
    omega = np.linspace(0, np.pi, n_fft // 2 + 1)
    zinv = np.exp(-1j * omega).astype(np.complex64)[None, :]
    centre = (np.arange(t_frames) * hop + n_fft // 2 - n_fft) / sr
    idx = np.clip(np.round(centre * sr / _HOP_C).astype(int), 0, len(formants) - 1)
    f = omega * sr / (2 * np.pi)
    resp = ((np.maximum(f, 1000.0) / 1000.0) ** (tilt / 6.02)).astype(np.complex64)[None, :]
    for k in range(formants.shape[1]):
        r = np.exp(-np.pi * bands[idx, k] / sr).astype(np.float32)[:, None]
        c = np.cos(2 * np.pi * formants[idx, k] / sr).astype(np.float32)[:, None]
        resp = resp * ((1 - 2 * r * c + r * r) / (1 - 2 * r * c * zinv + r * r * zinv * zinv))
    frames_out = np.fft.irfft(spec * resp, n_fft, axis=1) * w
    out = np.zeros(len(padded))
    norm = np.zeros(len(padded))
    for i in range(t_frames):
        out[i * hop : i * hop + n_fft] += frames_out[i]
        norm[i * hop : i * hop + n_fft] += w * w
    return (out / np.maximum(norm, 1e-3))[n_fft : n_fft + n]


def _render_voice(
    rng: np.random.Generator,
    singer: Singer,
    notes: list[_Note],
    tonic: int,
    scale: Sequence[int],
    sr: int,
    n: int,
) -> np.ndarray:
    """One sung line, (n,) float, voiced RMS about 1: source -> vocal tract -> consonants."""
    nc = n // _HOP_C + 2
    tc = np.arange(nc) * _HOP_C / sr
    midi_c = np.full(nc, np.nan)
    form_c = np.full((nc, 4), np.nan)
    band_c = np.full((nc, 4), np.nan)
    amp_c = np.zeros(nc)
    vib_c = np.zeros(nc)
    scoop_c = np.zeros(nc)
    breath_c = np.zeros(nc)
    hiss = {"s": np.zeros(nc), "sh": np.zeros(nc), "t": np.zeros(nc)}
    vib_delay = float(rng.uniform(0.03, 0.12))
    for j, note in enumerate(notes):
        i0, i1 = np.clip(np.round(np.array([note.start, note.end]) * sr / _HOP_C), 0, nc).astype(
            int
        )
        if i1 <= i0:
            continue
        t = tc[i0:i1] - note.start
        dur = note.end - note.start
        midi_c[i0:i1] = _midi(note.degree, tonic, scale)
        f, b = _VOWELS[note.vowel]
        form_c[i0:i1] = np.array(f) * singer.formant_scale
        band_c[i0:i1] = np.array(b) * (0.5 + 0.5 * singer.formant_scale)
        legato = note.onset == "legato"
        gap = 0.0 if legato else float(rng.uniform(0.03, 0.06))
        if note.onset in ("s", "sh"):
            gap = float(rng.uniform(0.06, 0.1))
            hiss[note.onset][i0:i1] += np.clip(1 - np.abs(2 * t / gap - 1), 0, 1) ** 0.5
        elif note.onset in ("t", "k"):
            hiss["t"][i0:i1] += ((t > gap - 0.012) & (t < gap)) * (
                1.0 if note.onset == "t" else 0.7
            )
        elif note.onset == "h":
            breath_c[i0:i1] += 0.5 * (t < gap)
        nxt = notes[j + 1] if j + 1 < len(notes) else None
        release = 0.0 if nxt is not None and nxt.onset == "legato" else 0.05
        a = np.clip((t - gap) / rng.uniform(0.02, 0.05), 0, 1)
        if release:
            a *= np.clip((dur - t) / release, 0, 1)
        a *= 1 - rng.uniform(0.0, 0.25) * t / dur
        if note.onset == "m":
            nasal = t < gap
            a[nasal] = 0.3
            form_c[i0:i1][nasal] = np.array(_VOWELS["m"][0]) * singer.formant_scale
            band_c[i0:i1][nasal] = np.array(_VOWELS["m"][1])
        amp_c[i0:i1] = a
        vib_c[i0:i1] = np.clip((t - vib_delay) / 0.12, 0.3, 1)
        if not legato:
            scoop_c[i0:i1] = -rng.uniform(0.2, 0.8) * np.exp(-t / 0.04)
        if nxt is not None and nxt.start - note.end > 0.12:  # breath intake before the next phrase
            k0 = int(note.end * sr / _HOP_C)
            k1 = min(nc, int(nxt.start * sr / _HOP_C))
            if k1 > k0:
                breath_c[k0:k1] += 0.4 * np.hanning(k1 - k0)
    midi_c, form_c, band_c = _ffill(midi_c), _ffill(form_c), _ffill(band_c)
    per_s = sr / _HOP_C
    drift = _smooth(rng.normal(0, 1, nc), int(0.3 * per_s)) * 3.0
    rate = singer.vibrato_rate * (1 + 0.04 * _smooth(rng.normal(0, 1, nc), int(0.5 * per_s)) * 4)
    vib_phase = 2 * np.pi * np.cumsum(rate) / per_s + rng.uniform(0, 2 * np.pi)
    pitch_c = (
        _smooth(midi_c, int(singer.glide * per_s))
        + scoop_c
        + singer.vibrato_depth * _smooth(vib_c, 20) * np.sin(vib_phase)
        + 0.08 * drift
        + singer.jitter * rng.normal(0, 1, nc)
    )
    dyn = 10 ** (_smooth(rng.normal(0, 1, nc), int(0.4 * per_s)) * 6 * 2.0 / 20)
    amp_c = _smooth(amp_c, 5) * dyn
    form_c = _smooth(form_c, int(0.05 * per_s))
    band_c = _smooth(band_c, int(0.05 * per_s))

    ta = np.arange(n) / sr
    f0 = _hz(np.interp(ta, tc, pitch_c))
    phase = rng.uniform() + np.cumsum(f0 / sr)
    frac = phase % 1.0
    oq = singer.open_quotient
    ref = _glottal_derivative(np.linspace(0, 1, 4096, endpoint=False), oq)
    dg = _glottal_derivative(frac, oq) / np.sqrt(np.mean(ref**2))
    shimmer = 1 + singer.shimmer * rng.normal(0, 1, int(phase[-1]) + 2)
    amp = np.interp(ta, tc, amp_c)
    noise_amp = np.interp(ta, tc, singer.breathiness * amp_c + 0.3 * _smooth(breath_c, 5))
    pulsed = 0.4 + 0.6 * (frac < oq)
    src = dg * shimmer[phase.astype(int)] * amp + rng.normal(0, 1, n) * pulsed * noise_amp
    # F5 is fixed-ish; it only shapes the top of the band.
    f5 = np.full((nc, 1), 4500.0 * singer.formant_scale)
    voice = _tract_filter(
        src,
        np.hstack([form_c, f5]),
        np.hstack([band_c, np.full((nc, 1), 300.0)]),
        singer.tilt,
        sr,
    )
    voiced = amp > 0.5
    voice /= np.sqrt(np.mean(voice[voiced] ** 2)) + 1e-9 if voiced.any() else 1.0
    for kind, (centre, octs, level) in {
        "s": (7000.0, 0.5, 0.12),
        "sh": (3500.0, 0.5, 0.1),
        "t": (4000.0, 1.2, 0.2),
    }.items():
        env = hiss[kind]
        if env.any():
            burst = rng.normal(0, 1, n) * np.interp(ta, tc, env)
            shaped = _shape_noise(burst, sr, min(centre, 0.4 * sr), octs)
            voice += level * shaped / (np.sqrt(np.mean(shaped**2) / np.mean(env > 0)) + 1e-9)
    return voice


# ---------------------------------------------------------------- accompaniment


@dataclass(frozen=True)
class _Inst:
    """A decaying (or sustained) harmonic instrument: two wavetables with their own decays."""

    amps: np.ndarray  # harmonic amplitudes, index 0 = fundamental
    split: int  # harmonics >= split form the bright table, which decays faster
    tau_body: float  # s
    tau_bright: float  # s
    attack: float  # s
    tau_release: float  # s, after the note's end
    sustain: bool  # pads and organ hold until the end instead of decaying
    detune: float  # cents of a second, detuned copy (0 = none)


def _make_inst(rng: np.random.Generator, kind: str) -> _Inst:
    """Timbre families: the tilt and decay ranges keep them instrument-like, not voice-like."""
    k = np.arange(1, 25)
    if kind == "piano":
        amps = k**-1.3 * rng.uniform(0.5, 1.0, k.size) * np.exp(-k / rng.uniform(6, 14))
        return _Inst(amps, 3, rng.uniform(0.8, 1.6), rng.uniform(0.15, 0.4), 0.003, 0.15, False, 0)
    if kind == "pluck":
        pos = rng.uniform(0.1, 0.3)  # pluck position: comb-filtered harmonics
        amps = np.abs(np.sin(np.pi * k * pos)) / k**1.1 + 1e-3
        return _Inst(amps, 3, rng.uniform(0.4, 0.9), rng.uniform(0.08, 0.2), 0.002, 0.08, False, 0)
    if kind == "pad":
        amps = k**-1.0 * np.exp(-k / rng.uniform(4, 8))
        return _Inst(amps, 4, 4.0, 2.0, rng.uniform(0.08, 0.25), 0.3, True, rng.uniform(4, 10))
    if kind == "organ":
        amps = np.zeros(k.size)
        amps[[0, 1, 2, 3, 5, 7]] = rng.uniform(0.1, 1.0, 6) * [1, 0.8, 0.6, 0.5, 0.3, 0.2]
        return _Inst(amps, 4, 4.0, 4.0, 0.03, 0.08, True, 0)
    # bass
    amps = k**-1.6 * (k <= 10)
    return _Inst(amps, 3, rng.uniform(0.6, 1.5), rng.uniform(0.1, 0.25), 0.004, 0.06, False, 0)


class _Band:
    """The accompaniment buffer and its note writer; wavetables cached per instrument and band."""

    table_bits = 14  # 16384-sample tables, nearest lookup: interpolation error below -40 dB

    def __init__(self, sr: int, n: int, rng: np.random.Generator) -> None:
        self.sr, self.n, self.rng = sr, n, rng
        self.out = np.zeros((2, n), dtype=np.float32)
        self._tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _table(self, inst: _Inst, n_harm: int) -> tuple[np.ndarray, np.ndarray]:
        key = (id(inst), n_harm)
        if key not in self._tables:
            size = 1 << self.table_bits
            spec = np.zeros((2, size // 2 + 1), dtype=complex)
            k = np.arange(1, n_harm + 1)
            bright = k > inst.split
            spec[0, k[~bright]] = -0.5j * size * inst.amps[:n_harm][~bright]
            spec[1, k[bright]] = -0.5j * size * inst.amps[:n_harm][bright]
            body, high = np.fft.irfft(spec, size, axis=1).astype(np.float32)
            self._tables[key] = (body, high)
        return self._tables[key]

    def note(
        self, inst: _Inst, start: float, dur: float, midi: float, vel: float, pan: float
    ) -> None:
        """Add one note; start may be negative (a note still ringing when the snippet begins)."""
        freq = float(_hz(midi))
        if inst.sustain:
            length = dur + 5 * inst.tau_release
        else:
            length = min(5 * inst.tau_body, dur + 5 * inst.tau_release)
        s0 = round(start * self.sr)
        a, b = max(0, s0), min(self.n, s0 + int(length * self.sr))
        if b <= a:
            return
        steps = np.arange(a - s0, b - s0, dtype=np.uint32)
        t = steps.astype(np.float32) / np.float32(self.sr)
        n_harm = max(1, min(len(inst.amps), int(0.45 * self.sr / freq)))
        body, bright = self._table(inst, n_harm)
        env = np.minimum(t * np.float32(1 / inst.attack), np.float32(1.0))
        if b - s0 > dur * self.sr:
            off = int(dur * self.sr) - (a - s0)
            if off < len(t):
                off = max(off, 0)
                env[off:] *= np.exp((t[off:] - np.float32(dur)) * np.float32(-1 / inst.tau_release))
        sig = np.zeros(len(t), dtype=np.float32)
        for cents in (0.0, inst.detune) if inst.detune else (0.0,):
            # 32-bit fixed-point phase: exact pitch, wraps for free, top bits index the table
            inc = np.uint32(round(freq * 2 ** (cents / 1200) / self.sr * 2**32) % 2**32)
            ph0 = np.uint32(self.rng.integers(2**32))
            idx = (steps * inc + ph0) >> np.uint32(32 - self.table_bits)
            if inst.sustain:
                sig += body[idx] + bright[idx]
            else:
                sig += body[idx] * np.exp(t * np.float32(-1 / inst.tau_body))
                sig += bright[idx] * np.exp(t * np.float32(-1 / inst.tau_bright))
        sig *= env * np.float32(vel)
        self.out[0, a:b] += sig * np.float32(np.cos(pan * np.pi / 2))
        self.out[1, a:b] += sig * np.float32(np.sin(pan * np.pi / 2))


_DRUMS = {  # 16th steps of one 4/4 bar: kick, snare/clap, closed hat
    "ballad": ((0, 10), (12,), (0, 4, 8, 12)),
    "pop": ((0, 7, 8), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14)),
    "electro": ((0, 4, 8, 12), (4, 12), (2, 6, 10, 14)),
    "acoustic": ((0, 8), (4, 12), tuple(range(16))),
}


def _drums(bt: Backing, trng: np.random.Generator, sr: int, n: int, t0: float, bar: float):
    """Kick = decaying sine sweep; snare and hats = shaped noise bursts; (2, n)."""
    kick_steps, snare_steps, hat_steps = _DRUMS[bt.style]
    if bt.style == "ballad" and trng.random() < 0.5:
        kick_steps, snare_steps = (), ()
    kick_f = trng.uniform(45, 60)
    snare_f = trng.uniform(170, 230)
    hat_c = trng.uniform(7000, 9500)
    kick = np.zeros(n)
    snare_tone = np.zeros(n)
    snare_env = np.zeros(n)
    hat_env = np.zeros(n)
    rng = np.random.default_rng(trng.integers(2**31))
    step = bar / 16

    def hit(env: np.ndarray, at: float, length: float, tau: float, vel: float) -> np.ndarray | None:
        s0 = round(at * sr)
        a, b = max(0, s0), min(n, s0 + int(length * sr))
        if b <= a:
            return None
        t = (np.arange(a, b) - s0) / sr
        env[a:b] += vel * np.exp(-t / tau)
        return t

    first = int(np.floor((t0 - 1.0) / bar))
    for bar_i in range(first, first + int(np.ceil((n / sr + 1.0) / bar)) + 2):
        for steps, kind in ((kick_steps, "k"), (snare_steps, "s"), (hat_steps, "h")):
            for s in steps:
                at = float(bar_i * bar + s * step - t0 + rng.normal(0, 0.004))
                vel = rng.uniform(0.8, 1.0) * (0.7 if kind == "h" and s % 4 else 1.0)
                if kind == "k":
                    s0 = round(at * sr)
                    a, b = max(0, s0), min(n, s0 + int(0.4 * sr))
                    if b > a:
                        t = (np.arange(a, b) - s0) / sr
                        f = kick_f + 100 * np.exp(-t / 0.03)
                        ph = 2 * np.pi * np.cumsum(f) / sr
                        kick[a:b] += vel * np.sin(ph) * np.exp(-t / 0.18)
                elif kind == "s":
                    t = hit(snare_env, at, 0.3, 0.06, vel)
                    if t is not None:
                        s0 = round(at * sr)
                        a = max(0, s0)
                        snare_tone[a : a + len(t)] += (
                            0.5 * vel * np.sin(2 * np.pi * snare_f * t) * np.exp(-t / 0.05)
                        )
                else:
                    hit(hat_env, at, 0.12, 0.02, vel)
    snare = _shape_noise(rng.normal(0, 1, n) * snare_env, sr, 2500.0, 1.0) + snare_tone
    hats = _shape_noise(rng.normal(0, 1, n) * hat_env, sr, min(hat_c, 0.42 * sr), 0.5) * 0.5
    pan_h = trng.uniform(0.3, 0.7)
    gains = 10 ** (trng.uniform(-3, 1, 3) / 20)
    mono = gains[0] * kick + gains[1] * snare
    hats *= gains[2] * (0.5 if bt.style == "ballad" else 1.0)
    return np.stack(
        [
            mono * 0.7071 + hats * np.cos(pan_h * np.pi / 2),
            mono * 0.7071 + hats * np.sin(pan_h * np.pi / 2),
        ]
    )


def _render_backing(
    bt: Backing, rng: np.random.Generator, sr: int, n: int, t0: float
) -> np.ndarray:
    """The backing track from t0 s into its loop, (2, n) float, RMS about 1."""
    trng = np.random.default_rng(bt.seed)  # timbres, pans and levels: fixed per track
    scale = _MINOR if bt.minor else _MAJOR
    tonic = 24 + bt.key_root
    bar = 240.0 / bt.tempo
    step = bar / 16
    chord_inst = _make_inst(
        trng, {"ballad": "piano", "pop": "pluck", "electro": "pad", "acoustic": "pluck"}[bt.style]
    )
    arp_inst = _make_inst(trng, "pluck" if bt.style == "electro" else "piano")
    bass = _make_inst(trng, "bass")
    lead = _make_inst(trng, "organ")
    band = _Band(sr, n, rng)
    pans = trng.uniform(0.2, 0.8, 3)
    gains = 10 ** (trng.uniform(-4, 2, 4) / 20)
    first = int(np.floor((t0 - 2.0) / bar))
    lead_deg = 14 + int(trng.integers(0, 4))
    for bar_i in range(first, first + int(np.ceil((n / sr + 2.0) / bar)) + 2):
        root = bt.progression[bar_i % len(bt.progression)]
        start = bar_i * bar - t0
        chord = [_midi(root + 7 + d, tonic, scale) for d in (0, 2, 4)]  # around C3-C4
        chord = [m + 12 if m < 48 else m for m in chord]
        bass_m = _midi(root, tonic, scale) + (12 if _midi(root, tonic, scale) < 33 else 0)
        vel = lambda: float(rng.uniform(0.7, 1.0))  # noqa: E731
        if bt.style == "ballad":
            for i, m in enumerate(chord):
                band.note(chord_inst, start + 0.01 * i, bar, m, 0.6 * gains[0] * vel(), pans[0])
            for s in range(2, 16, 2):
                m = chord[int(rng.integers(3))] + 12
                band.note(arp_inst, start + s * step, 2 * step, m, 0.4 * gains[1] * vel(), pans[1])
            band.note(bass, start, bar, bass_m, gains[2] * vel(), 0.5)
        elif bt.style in ("pop", "acoustic"):
            if bt.style == "pop":
                for j, s in enumerate((0, 3, 6, 8, 11, 14)):
                    order = chord if j % 2 == 0 else chord[::-1]
                    for i, m in enumerate(order):
                        at = start + s * step + 0.012 * i
                        band.note(chord_inst, at, 3 * step, m, 0.5 * gains[0] * vel(), pans[0])
                bass_steps = range(0, 16, 2)
            else:
                pattern = (0, 2, 1, 2) if trng.random() < 0.5 else (0, 1, 2, 1)
                for s in range(0, 16, 2):
                    m = chord[pattern[(s // 2) % 4]] + (12 if s % 4 == 2 else 0)
                    band.note(
                        chord_inst, start + s * step, 2 * step, m, 0.6 * gains[0] * vel(), pans[0]
                    )
                bass_steps = range(0, 16, 8)
            for s in bass_steps:
                band.note(bass, start + s * step, 2 * step, bass_m, gains[2] * vel(), 0.5)
        else:  # electro
            for m in chord:
                band.note(chord_inst, start, bar * 0.95, m, 0.3 * gains[0], pans[0])
            for s in range(16):
                m = chord[s % 3] + 12 * (1 + (s // 3) % 2)
                band.note(arp_inst, start + s * step, step, m, 0.3 * gains[1] * vel(), pans[1])
            for s in range(2, 16, 4):
                band.note(bass, start + s * step, 2 * step, bass_m, gains[2] * vel(), 0.5)
        if bt.lead:
            for s in (0, 8):
                lead_deg += int(rng.choice([-2, -1, 1, 2]))
                lead_deg = int(np.clip(lead_deg, 12, 19))
                m = _midi(lead_deg + 7, tonic, scale)
                band.note(lead, start + s * step, 8 * step, m, 0.5 * gains[3], pans[2])
    acc = band.out / (np.sqrt(np.mean(band.out**2)) + 1e-9)
    drums = _drums(bt, trng, sr, n, t0, bar)
    if np.any(drums):
        acc += drums / np.sqrt(np.mean(drums**2)) * 10 ** (trng.uniform(-12, -5) / 20)
    return acc / (np.sqrt(np.mean(acc**2)) + 1e-9)


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
    acc = _render_backing(bt, rng, r_sr, n_r, t0)
    scale = _MINOR if bt.minor else _MAJOR
    tonic = 24 + bt.key_root
    dry: list[np.ndarray] = []
    vocals = np.zeros((2, n_r))
    if chosen:
        lead_notes = _melody(rng, seconds, chosen[0], tonic, scale)
        for i, s in enumerate(chosen):
            notes = lead_notes if i == 0 else _harmony(rng, lead_notes, chosen[0], s, tonic, scale)
            v = _render_voice(rng, s, notes, tonic, scale, r_sr, n_r)
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
