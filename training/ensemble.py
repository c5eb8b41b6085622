"""The ensemble: N members of one architecture, their mean softmax and how much they disagree.

Two ways to run the same maths, chosen per device because neither wins everywhere:
"loop" runs member after member; "fused" stacks all members' weights and runs them as one batched
computation (``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``). On a 2-core CPU
the loop is faster (vmap measured 0.53x at batch 1); on a GPU one big kernel launch per layer wins.
Both give the same probabilities (tests check atol 1e-5 in float32).

Weights are stored as safetensors (one file per member) plus ``meta.json``; nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from training.model import INPUT_LAYOUT, build_member, prepare_input
from training.voice_head import HEAD_FILE, VoiceHead

log = logging.getLogger(__name__)

Mode = Literal["auto", "loop", "fused"]
META_FILE = "meta.json"
META_FORMAT = "scorer-ensemble/1"


def member_file(i: int) -> str:
    return f"member_{i:02d}.safetensors"


def calibrate(proba: Tensor, temperature: float) -> Tensor:
    """(B, C) ensemble probabilities -> softmax(log(proba) / temperature): temperature scaling
    of the averaged log-probabilities, so the argmax (every decision) never changes; T > 1
    softens, T < 1 sharpens. T = 1 returns ``proba`` itself. Why the average and not each
    member's logits: see ``training.calibration.fit_temperature``."""
    if temperature == 1.0:
        return proba
    return torch.softmax(proba.float().clamp_min(1e-12).log() / temperature, dim=-1)


def summarize(
    member_probs: Tensor, temperature: float = 1.0, proba: Tensor | None = None
) -> dict[str, Tensor]:
    """Ensemble decision and uncertainty from the members' probabilities.

    ``member_probs``: (M, B, C) softmax outputs. Returns, each over the batch B:
    ``proba`` (B, C) mean of the members, calibrated at ``temperature``; ``label_idx`` (B,)
    int64 argmax of ``proba``; ``confidence`` (B,) its max probability; ``disagreement`` (B,)
    fraction of members whose own argmax differs from the ensemble's (0 = unanimous, 0.5 = half
    the members vote elsewhere);
    ``entropy`` (B,) predictive entropy of ``proba`` in nats (0 = certain, ln C = uniform).
    ``proba``, when given, is the decision instead of the calibrated mean (the members fused
    with the voice head); disagreement is still the members' with it.
    """
    if member_probs.dim() != 3:
        raise ValueError(
            f"expected (M, B, C) member probabilities, got {tuple(member_probs.shape)}"
        )
    p = member_probs.float()
    proba = calibrate(p.mean(dim=0), temperature) if proba is None else proba.float()
    confidence, label_idx = proba.max(dim=1)
    member_idx = p.argmax(dim=2)  # (M, B)
    disagreement = (member_idx != label_idx.unsqueeze(0)).float().mean(dim=0)
    entropy = -torch.special.xlogy(proba, proba).sum(dim=1)  # 0 * log 0 = 0
    return {
        "proba": proba,
        "label_idx": label_idx,
        "confidence": confidence,
        "disagreement": disagreement,
        "entropy": entropy,
    }


def native_bf16(device: str | torch.device) -> bool:
    """Whether bf16 convolutions run at full speed on ``device``: any CUDA card, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated, slower than float32 (bench ``member_forward``:
    1.95x faster with native bf16 on a 2-core AMD EPYC, docs/BENCHMARKS.md)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: may go away
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


CUDA_BF16_MIN_BATCH = 256
"""On CUDA, bf16 autocast pays only for big batches: on an H200 (20 × ResNet-34) it ran 0.63–0.81×
float32 at 1 and 32 windows (its casts add kernel launches to launch-bound work) and 1.54× at 256
(docs/BENCHMARKS.md, GPU round). Below this many windows ``auto`` runs float32 there."""


def use_bf16(device_type: str, batch: int, amp: bool, *, auto: bool) -> bool:
    """Whether one forward of ``batch`` windows runs in bf16 autocast. ``amp``: the ensemble's
    setting; ``auto``: it was left to the hardware (then CUDA batches below
    ``CUDA_BF16_MIN_BATCH`` run float32, where float32 was measured faster)."""
    if not amp:
        return False
    return not (auto and device_type == "cuda" and batch < CUDA_BF16_MIN_BATCH)


class Ensemble:
    """N members of one architecture, run in eval mode on one device.

    ``mode``: "loop", "fused" or "auto" (fused on cuda, loop elsewhere: the measured winner).
    ``amp``: bf16 autocast; None = where the hardware runs bf16 natively (``native_bf16``), and
    True/False force it. It moves probabilities by ~1e-3 and held-out accuracy not measurably
    (docs/RESULTS.md). ``channels_last``: NHWC memory format for the loop's convolutions, on cuda
    only (no gain on CPU). Inputs are features (B, 299, 40) or (B, 1, 299, 40), any float dtype.
    ``temperature``: the members' mean probability is rescaled by it (``calibrate``; fitted on
    the validation singers by training, kept in meta.json as ``temperature``); None = the meta's,
    or 1.0 (uncalibrated, exactly as before) for a model saved without one.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        classes: Sequence[str],
        *,
        normalize: str = "none",
        device: str | torch.device = "cpu",
        mode: Mode = "auto",
        amp: bool | None = None,
        channels_last: bool | None = None,
        meta: dict[str, Any] | None = None,
        temperature: float | None = None,
        voice_head: VoiceHead | None = None,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        if mode == "auto":
            mode = "fused" if on_cuda else "loop"
        if mode not in ("loop", "fused"):
            raise ValueError(f"unknown mode {mode!r}; choose auto, loop or fused")
        self.mode: Literal["loop", "fused"] = mode
        self.classes = list(classes)
        self.normalize = normalize
        self.amp = native_bf16(self.device) if amp is None else amp
        self._amp_auto = amp is None
        # NHWC for the loop only: vmap cannot run on channels_last tensors ("NYI: querying
        # is_contiguous inside of vmap for memory_format other than torch.contiguous_format",
        # seen on an H200), so the fused mode always runs contiguous.
        want = on_cuda if channels_last is None else channels_last
        self.channels_last = bool(want and on_cuda and mode == "loop")
        self.meta = dict(meta or {})
        t = self.meta.get("temperature", 1.0) if temperature is None else temperature
        if not (isinstance(t, int | float) and t > 0 and t != float("inf")):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        self.temperature = float(t)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.members = [m.to(self.device, memory_format=fmt).eval() for m in members]
        self._fused = self._build_fused() if mode == "fused" else None
        self.voice_head: VoiceHead | None = voice_head

    @property
    def voice_version(self) -> str | None:
        """The cache key of the voice features the head was fitted on (None: no head)."""
        return (self.meta.get("voice") or {}).get("version") if self.voice_head else None

    @property
    def n_members(self) -> int:
        return len(self.members)

    def _build_fused(self):
        """A function x -> (M, B, C) logits running all members as one vmapped computation.

        In eval mode batchnorm reads its running stats, which are stacked with the other buffers,
        so each member normalises with its own statistics. The base module lives on the meta
        device: it only provides the structure that ``functional_call`` fills with weights.
        """
        params, buffers = stack_module_state(self.members)
        self._params = {k: v.detach() for k, v in params.items()}
        self._buffers = buffers
        base = copy.deepcopy(self.members[0]).to("meta").eval()

        def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(base, (p, b), (x,))

        return vmap(one, in_dims=(0, 0, None))

    @torch.no_grad()
    def member_logits(self, x: Tensor) -> Tensor:
        """(B, 1, 299, 40) features -> (M, B, C) float32 logits, one slice per member."""
        x = prepare_input(x.to(self.device, non_blocking=True), self.normalize)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = use_bf16(self.device.type, x.shape[0], self.amp, auto=self._amp_auto)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            if self._fused is not None:
                out = self._fused(self._params, self._buffers, x)
            else:
                out = torch.stack([m(x) for m in self.members])
        return out.float()

    def member_proba(self, x: Tensor) -> Tensor:
        """(B, 1, 299, 40) -> (M, B, C) each member's softmax, float32 (uncalibrated)."""
        return torch.softmax(self.member_logits(x), dim=-1)

    def predict_proba(self, x: Tensor) -> Tensor:
        """(B, 1, 299, 40) -> (B, C) mean of the members' softmax, at ``temperature``."""
        return calibrate(self.member_proba(x).mean(dim=0), self.temperature)

    def predict(self, x: Tensor, voice: Tensor | None = None) -> dict[str, Tensor]:
        """(B, 1, 299, 40) -> ``summarize`` of the members' probabilities (see there), with
        ``decision``'s probabilities as the verdict."""
        mp = self.member_proba(x)
        return summarize(mp, proba=self.decision(mp, voice))

    def decision(self, member_probs: Tensor, voice: Tensor | None = None) -> Tensor:
        """(M, B, C) member probabilities -> (B, C) the model's verdict: the calibrated mean;
        with a voice head (``voice_head``, saved beside the members) and the windows' voice
        features ``voice`` (B, D), that mean fused with the head (training/voice_head.py).
        A window without features (a NaN row: featurised before voice features were on) keeps
        the members' mean."""
        mean = calibrate(member_probs.float().mean(dim=0), self.temperature)
        if self.voice_head is None or voice is None:
            return mean
        voice = voice.to(mean.device).float()
        known = torch.isfinite(voice).all(dim=1, keepdim=True)
        fused = self.voice_head.fuse(mean, torch.nan_to_num(voice))
        return torch.where(known, fused, mean)


def save_members(directory: Path, members: Sequence[nn.Module], meta: dict[str, Any]) -> Path:
    """Write ``member_00.safetensors``... and ``meta.json`` into ``directory``; returns it.

    ``meta`` must say what a loader needs to rebuild and feed the members: ``classes``, ``arch``,
    ``normalize``, plus whatever the caller wants kept with the model (frontend parameters and
    version, validation metrics); it must be JSON-serialisable. The member count and the input
    layout are added here.
    """
    for key in ("classes", "arch", "normalize"):
        if key not in meta:
            raise ValueError(f"meta lacks {key!r}; save_members needs classes, arch and normalize")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(members):
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
        save_file(tensors, str(directory / member_file(i)))
    full = {
        **meta,
        "format": META_FORMAT,
        "n_members": len(members),
        "input_layout": INPUT_LAYOUT,
    }
    tmp = directory / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True))
    tmp.replace(directory / META_FILE)
    log.info("saved %d members to %s", len(members), directory)
    return directory


def load_ensemble(
    directory: Path,
    device: str | torch.device = "cpu",
    mode: Mode = "auto",
    **ensemble_kwargs: Any,
) -> Ensemble:
    """Rebuild an ensemble written by ``save_members``; safetensors only, no pickle."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not an ensemble directory")
    meta = json.loads(meta_path.read_text())
    if meta.get("input_layout", INPUT_LAYOUT) != INPUT_LAYOUT:
        raise ValueError(
            f"{directory}: model expects input layout {meta['input_layout']}, "
            f"this code feeds {INPUT_LAYOUT}"
        )
    classes = meta["classes"]
    members = []
    for i in range(int(meta["n_members"])):
        # Built on the meta device: no random initialisation that the weights overwrite anyway
        # (it was most of the load time: ~0.2 s per ResNet34 member on this CPU).
        with torch.device("meta"):
            m = build_member(len(classes), meta["arch"])
        m.load_state_dict(load_file(str(directory / member_file(i))), strict=True, assign=True)
        members.append(m)
    return Ensemble(
        members,
        classes,
        normalize=meta["normalize"],
        device=device,
        mode=mode,
        meta=meta,
        voice_head=_voice_head(directory, meta),
        **ensemble_kwargs,
    )


def _voice_head(directory: Path, meta: dict[str, Any]) -> VoiceHead | None:
    """The model's voice head, where its meta says it has one (then the file must be there)."""
    if not meta.get("voice"):
        return None
    head = VoiceHead.load(directory)
    if head is None:
        raise FileNotFoundError(f"{directory / HEAD_FILE} not found, but meta.json names a head")
    return head
