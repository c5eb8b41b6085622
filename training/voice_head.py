"""The voice head: a linear classifier on voice features, fused with the log-mel ensemble.

Pitch statistics and a pretrained speaker embedding (pipeline/voice.py) separate male from
female voices on singers never heard far better than a log-mel ResNet trained on a dozen singers
learns to; but alone they know nothing of accompaniment or of two voices at once. So the head
is a plain multinomial logistic regression (standardised inputs, L2, balanced classes: few
parameters, nothing to tune but one strength), and the verdict is a weighted mean of the two
models' log-probabilities, renormalised:

    log p ∝ (1 - w) · log p_ensemble + w · log p_voice

``w`` and the L2 strength are chosen on the validation singers (never the held-out ones), the
head's weights on the training singers. All of it is a few kilobytes stored beside the members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.calibration import fit_ensemble_temperature

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))
HEAD_FILE = "voice_head.safetensors"


@dataclass
class VoiceHead:
    """Standardisation + linear layer over the voice features, and the fusion weight."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    fusion_weight: float = 0.5
    l2: float = 1e-2
    temperature: float = 1.0  # of the fused log-probabilities, fitted on validation: keeps argmax

    def log_proba(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) voice features -> (N, C) log-probabilities."""
        z = (feats.float() - self.mean.to(feats.device)) / self.std.to(feats.device)
        return F.log_softmax(z @ self.weight.to(feats.device).T + self.bias.to(feats.device), dim=1)

    def fuse(self, ensemble_proba: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """(N, C) ensemble probabilities + (N, D) voice features -> (N, C) fused probabilities."""
        return fuse(ensemble_proba, self.log_proba(feats), self.fusion_weight, self.temperature)

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        path = folder / HEAD_FILE
        save_file(
            {
                "mean": self.mean.contiguous(),
                "std": self.std.contiguous(),
                "weight": self.weight.contiguous(),
                "bias": self.bias.contiguous(),
                "fusion_weight": torch.tensor([self.fusion_weight], dtype=torch.float64),
                "l2": torch.tensor([self.l2], dtype=torch.float64),
                "temperature": torch.tensor([self.temperature], dtype=torch.float64),
            },
            str(path),
        )
        return path

    @classmethod
    def load(cls, folder: Path) -> VoiceHead | None:
        """The head saved in `folder`, or None where the model has none."""
        path = folder / HEAD_FILE
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(
            t["mean"],
            t["std"],
            t["weight"],
            t["bias"],
            float(t["fusion_weight"][0]),
            float(t["l2"][0]),
            float(t["temperature"][0]) if "temperature" in t else 1.0,
        )


def fuse(
    ensemble_proba: torch.Tensor,
    voice_log_proba: torch.Tensor,
    w: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Weighted geometric mean of two class distributions, renormalised, at ``temperature``
    (which rescales confidence and never changes the argmax)."""
    log_e = torch.log(ensemble_proba.float().clamp_min(1e-12))
    return torch.softmax(((1 - w) * log_e + w * voice_log_proba.float()) / temperature, dim=1)


def balanced_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (C · count) per class; a class absent from y gets weight 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def fit_linear(
    x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int = 200
) -> VoiceHead:
    """Multinomial logistic regression by L-BFGS on standardised x; deterministic."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    mean = xt.mean(0)
    std = xt.std(0).clamp_min(1e-6)
    z = (xt - mean) / std
    weight = torch.zeros(n_classes, z.shape[1], requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    cw = balanced_weights(np.asarray(y), n_classes)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, yt, weight=cw) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return VoiceHead(mean, std, weight.detach().clone(), bias.detach().clone(), 0.5, l2)


def _nll(proba: torch.Tensor, y: np.ndarray) -> float:
    return float(F.nll_loss(torch.log(proba.clamp_min(1e-12)), torch.as_tensor(y)).item())


def fit_voice_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    n_classes: int,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    ensemble_val_proba: np.ndarray | None = None,
    l2_grid: Sequence[float] = L2_GRID,
    weight_grid: Sequence[float] = WEIGHT_GRID,
) -> VoiceHead:
    """Fit the head on the training singers; pick L2 and the fusion weight on validation ones.

    Both choices minimise the validation log-loss (of the head alone for L2, of the fused model
    for the weight), which needs no threshold and uses every snippet; then a temperature of the
    fused log-probabilities is fitted there too (calibration; decisions unchanged). Without
    validation snippets the middle of the grid and w = 0.5 are used.
    """
    if x_val is None or y_val is None or len(y_val) == 0:
        return fit_linear(x_train, y_train, n_classes, l2_grid[len(l2_grid) // 2])
    xv = torch.as_tensor(np.asarray(x_val, dtype=np.float32))
    best: tuple[float, VoiceHead] | None = None
    for l2 in l2_grid:
        head = fit_linear(x_train, y_train, n_classes, l2)
        loss = _nll(head.log_proba(xv).exp(), y_val)
        if best is None or loss < best[0]:
            best = (loss, head)
    assert best is not None
    head = best[1]
    if ensemble_val_proba is not None:
        ev = torch.as_tensor(np.asarray(ensemble_val_proba, dtype=np.float32))
        lv = head.log_proba(xv)
        losses = [(_nll(fuse(ev, lv, w), y_val), w) for w in weight_grid]
        head.fusion_weight = min(losses)[1]
        # The fusion is sharper than either input was calibrated for (held-out ECE 0.052 ->
        # 0.089 without this; docs/RESULTS.md 0f): one temperature on the fused log-probs.
        fused = fuse(ev, lv, head.fusion_weight).numpy()
        head.temperature = fit_ensemble_temperature(fused, np.asarray(y_val))
    return head
