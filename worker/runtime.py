"""What a process loads once: the torch device, the Spleeter separator, model ensembles.

Loaded lazily on first use, not at import, so `scorer --help` is instant and a forked Celery
child loads its own copy after the fork.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.frontend import FrontendConfig
from scorer.errors import ScorerError
from scorer.settings import Settings

if TYPE_CHECKING:
    from pipeline.spleeter import Separator
    from pipeline.voice import VoiceConfig
    from training.ensemble import Ensemble

log = logging.getLogger(__name__)


class ModelUnavailable(ScorerError):
    """A configuration fault, not a snippet's: the model's weights are missing here or are not
    the model version's. Snippets wait (their messages come back); nothing is failed."""


def resolve_device(requested: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu. Chosen only here, at the entry point."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        from scorer.errors import ScorerError

        raise ScorerError("SCORER_DEVICE=cuda but no CUDA device is visible; use auto or cpu")
    return requested


def configure_threads(settings: Settings) -> None:
    """torch intra-op threads: SCORER_TORCH_THREADS, or every core for the one embedded process."""
    import torch

    n = settings.torch_threads or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def spleeter_bf16_wanted(setting: bool | None, native: bool) -> bool:
    """SCORER_SEPARATION_BF16 as a decision: on / off as said; auto (None) = where bf16 is
    native (`native`: training.ensemble.native_bf16 of the device), elsewhere it is emulated and
    slower than float32."""
    return native if setting is None else setting


def _spleeter_bf16(settings: Settings, native_bf16: bool | None) -> bool:
    """The settings' decision for a separating front end; the hardware is probed only for auto."""
    if settings.separation_amp is not None:
        return settings.separation_amp
    if native_bf16 is None:
        from training.ensemble import native_bf16 as probe

        native_bf16 = probe(resolve_device(settings.device))
    return spleeter_bf16_wanted(None, native_bf16)


def frontend_from_settings(settings: Settings, native_bf16: bool | None = None) -> FrontendConfig:
    """The settings' front end. `native_bf16`: whether this machine has native bf16 (None =
    detect it; only asked when separating under SCORER_SEPARATION_BF16=auto)."""
    return FrontendConfig(
        separation=settings.separation,
        spleeter_frames=settings.spleeter_frames,
        spleeter_bf16=settings.separation and _spleeter_bf16(settings, native_bf16),
    )


def scoring_frontend(
    model_frontend: FrontendConfig, settings: Settings, native_bf16: bool | None = None
) -> FrontendConfig:
    """The front end a model's features are made with here: its own, except that the fast
    profile runs Spleeter with its own segment (`Settings.segment_override`) and its
    SCORER_SEPARATION_BF16 (`native_bf16` as in `frontend_from_settings`). Another T or precision
    is another front-end version, so those features are stored and looked up apart, never mixed
    with the model's own."""
    t = settings.segment_override
    if t is None or not model_frontend.separation:
        return model_frontend
    bf16 = _spleeter_bf16(settings, native_bf16)
    wanted = replace(model_frontend, spleeter_frames=t, spleeter_bf16=bf16)
    return model_frontend if wanted == model_frontend else wanted


@dataclass
class Runtime:
    """Per-process state shared by every stage run in this process."""

    settings: Settings
    frontend_override: FrontendConfig | None = None
    _ensembles: dict[str, Ensemble] = field(default_factory=dict)

    @cached_property
    def device(self) -> str:
        return resolve_device(self.settings.device)

    @cached_property
    def frontend(self) -> FrontendConfig:
        """The model's front end when one is given (features must match what it was trained on,
        or be `scoring_frontend`'s variant of it), else the settings'."""
        return self.frontend_override or frontend_from_settings(self.settings)

    @cached_property
    def voice(self) -> VoiceConfig | None:
        """The voice features to compute beside the log-mel (SCORER_VOICE_FEATURES), or None."""
        if not self.settings.voice_features:
            return None
        from pipeline.voice import VoiceConfig

        return VoiceConfig()

    @property
    def voice_version(self) -> str | None:
        return self.voice.version(self.frontend.version) if self.voice else None

    @cached_property
    def separator(self) -> Separator | None:
        if not self.frontend.separation:
            return None
        from pipeline.spleeter import describe_frames, load_separator

        fe = self.frontend
        t = describe_frames(fe.spleeter_frames)
        precision = "bf16 U-Nets" if fe.spleeter_bf16 else "float32"
        log.info("loading Spleeter 2-stem (T=%s, %s) on %s", t, precision, self.device)
        return load_separator(self.device, fe.spleeter_frames, fe.spleeter_bf16)

    def ensemble(self, weights_uri: str, classes: Sequence[str] | None = None) -> Ensemble:
        """The ensemble stored at `weights_uri`, loaded once per process.

        `classes`: the model version row's; the weights must say the same (in the same order),
        or every label would be wrong. Raises ModelUnavailable when the folder is missing or
        unreadable (a host without the shared model dir) or the classes differ.
        """
        if weights_uri not in self._ensembles:
            from training.ensemble import load_ensemble

            path = Path(weights_uri)
            if not path.is_absolute():
                path = self.settings.resolved_model_dir / path
            try:
                ens = load_ensemble(path, self.device, amp=self.settings.infer_amp)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelUnavailable(
                    f"model weights at {path} cannot be loaded on this host ({exc}); is "
                    "SCORER_MODEL_DIR the shared model folder here?"
                ) from exc
            log.info(
                "ensemble %s: %d members, %s on %s, %s",
                path.name, ens.n_members, ens.mode, self.device,
                "bf16 autocast" if ens.amp else "float32",
            )  # fmt: skip
            self._ensembles[weights_uri] = ens
        ens = self._ensembles[weights_uri]
        if classes is not None and list(ens.classes) != list(classes):
            raise ModelUnavailable(
                f"model weights at {weights_uri} have classes {list(ens.classes)} but the model "
                f"version says {list(classes)}: the folder holds another model"
            )
        return ens
