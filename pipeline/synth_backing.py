"""The backing-track synthesiser: harmonic instruments, drums and the band arrangement.

The backing must look like instruments to the separator: stable harmonic pitch, percussive
decays. A `Backing` is a fixed random parameter set, so train/test can hold out whole tracks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from pipeline.synth_dsp import MAJOR, MINOR, degree_to_midi, midi_to_hz, shape_noise

Style = Literal["ballad", "pop", "electro", "acoustic"]
STYLES: tuple[Style, ...] = get_args(Style)


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
        freq = float(midi_to_hz(midi))
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
    snare = shape_noise(rng.normal(0, 1, n) * snare_env, sr, 2500.0, 1.0) + snare_tone
    hats = shape_noise(rng.normal(0, 1, n) * hat_env, sr, min(hat_c, 0.42 * sr), 0.5) * 0.5
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


def render_backing(bt: Backing, rng: np.random.Generator, sr: int, n: int, t0: float) -> np.ndarray:
    """The backing track from t0 s into its loop, (2, n) float, RMS about 1."""
    trng = np.random.default_rng(bt.seed)  # timbres, pans and levels: fixed per track
    scale = MINOR if bt.minor else MAJOR
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
        chord = [degree_to_midi(root + 7 + d, tonic, scale) for d in (0, 2, 4)]  # around C3-C4
        chord = [m + 12 if m < 48 else m for m in chord]
        root_m = degree_to_midi(root, tonic, scale)
        bass_m = root_m + (12 if root_m < 33 else 0)
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
                m = degree_to_midi(lead_deg + 7, tonic, scale)
                band.note(lead, start + s * step, 8 * step, m, 0.5 * gains[3], pans[2])
    acc = band.out / (np.sqrt(np.mean(band.out**2)) + 1e-9)
    drums = _drums(bt, trng, sr, n, t0, bar)
    if np.any(drums):
        acc += drums / np.sqrt(np.mean(drums**2)) * 10 ** (trng.uniform(-12, -5) / 20)
    return acc / (np.sqrt(np.mean(acc**2)) + 1e-9)
