"""The singing-voice synthesiser: singers, melodies, a glottal source through a vocal tract.

The voices must look like singing to a separator trained on real music: formants, vibrato,
syllables, breath and consonants. A `Singer` is a fixed random parameter set, so a data set has
singer groups and train/test can hold out whole singers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.synth_dsp import degree_to_midi, hz_to_midi, midi_to_hz, shape_noise

Gender = Literal["male", "female"]

_HOP_C = 64  # control-rate hop in samples (~2.9 ms at 22.05 kHz)
_F0_RANGE = {"male": (85.0, 180.0), "female": (180.0, 380.0)}  # Hz, hard bounds of the sung notes
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


# ---------------------------------------------------------------- melody


@dataclass(frozen=True)
class Note:
    start: float  # s from the snippet start
    end: float
    degree: int  # scale degree from the tonic
    vowel: str
    onset: str  # consonant before the vowel, "" for a plain vowel onset, "legato" for a melisma


def _singer_range(singer: Singer) -> tuple[float, float]:
    """Sung MIDI range: about +-6 semitones around the centre, inside the gender's bounds."""
    lo, hi = _F0_RANGE[singer.gender]
    c = hz_to_midi(singer.f0_center)
    return max(hz_to_midi(lo), c - 6), min(hz_to_midi(hi), c + 6)


def melody(
    rng: np.random.Generator, seconds: float, singer: Singer, tonic: int, scale: Sequence[int]
) -> list[Note]:
    """A random walk on the key's scale in the singer's range: 0.2-0.6 s notes, one breath rest."""
    lo, hi = _singer_range(singer)
    allowed = [d for d in range(-40, 60) if lo <= degree_to_midi(d, tonic, scale) <= hi]
    d = allowed[len(allowed) // 2 + int(rng.integers(-2, 3))]
    notes: list[Note] = []
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
        notes.append(Note(t, t + dur, d, vowel, onset))
        t += dur
    return notes


def harmony(
    rng: np.random.Generator,
    lead: list[Note],
    lead_singer: Singer,
    singer: Singer,
    tonic: int,
    scale: Sequence[int],
) -> list[Note]:
    """A second part on the same words: a third, fifth or sixth away (never a unison), or the
    same line in another octave when the genders differ."""
    if lead_singer.gender != singer.gender and rng.random() < 0.5:
        offset = 0
    else:
        offset = int(rng.choice([-5, -4, -2, 2, 4, 5]))
    lo, hi = _singer_range(singer)
    c = hz_to_midi(singer.f0_center)
    degrees = np.array([n.degree + offset for n in lead])
    med = np.median([degree_to_midi(int(d), tonic, scale) for d in degrees])
    degrees += 7 * int(np.round((c - med) / 12))
    delay = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.3 else -1.0
    notes = []
    for n, d in zip(lead, degrees, strict=True):
        # Notes outside the singer's range move by octaves to the nearest fit; the pitch class,
        # hence the interval to the lead, stays.
        d = min(
            (int(d) + 7 * k for k in range(-3, 4)),
            key=lambda x: (
                max(lo - degree_to_midi(x, tonic, scale), degree_to_midi(x, tonic, scale) - hi, 0),
                abs(x - d),
            ),
        )
        if n.start >= delay:
            jit = float(rng.normal(0, 0.012))
            notes.append(Note(n.start + jit, n.end + jit, d, n.vowel, n.onset))
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


def render_voice(
    rng: np.random.Generator,
    singer: Singer,
    notes: list[Note],
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
        midi_c[i0:i1] = degree_to_midi(note.degree, tonic, scale)
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
    f0 = midi_to_hz(np.interp(ta, tc, pitch_c))
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
            shaped = shape_noise(burst, sr, min(centre, 0.4 * sr), octs)
            voice += level * shaped / (np.sqrt(np.mean(shaped**2) / np.mean(env > 0)) + 1e-9)
    return voice
