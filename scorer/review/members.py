"""Each ensemble member's vote on one snippet, computed on demand from its cached features.

The predictions table keeps only the ensemble's mean and its disagreement, so the votes are
recomputed: one forward of the model version's members over the snippet's windows, the weights
loaded once per server.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.models import ModelVersion
from scorer.settings import Settings

CACHE_SIZE = 256


class MemberVotes:
    """Votes per (model version, sha256), the latest CACHE_SIZE kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: Any = None
        self._cache: OrderedDict[tuple[int, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def votes(self, session: Session, model: ModelVersion, sha: str) -> dict[str, Any]:
        """{"members": [{"member", "label", "probabilities"}], ...} or {"unavailable": why}."""
        key = (model.id, sha)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            out = self._compute(session, model, sha)
            if "unavailable" not in out:
                self._cache[key] = out
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            return out

    def _compute(self, session: Session, model: ModelVersion, sha: str) -> dict[str, Any]:
        import numpy as np
        import torch

        from training.calibration import calibrate
        from worker.runtime import ModelUnavailable, Runtime, configure_threads
        from worker.stages import file_verdict

        feats = queries.load_features(session, [sha], model.frontend_version)
        if sha not in feats:
            return {"unavailable": f"no cached features of model {model.name}'s front end"}
        if self._runtime is None:
            configure_threads(self.settings)
            self._runtime = Runtime(self.settings)
        try:
            ensemble = self._runtime.ensemble(model.weights_uri, list(model.classes))
        except ModelUnavailable as exc:
            return {"unavailable": str(exc)}
        classes = list(model.classes)
        windows, batch, parts = feats[sha], self.settings.infer_batch, []
        with torch.inference_mode():
            for b in range(0, len(windows), batch):
                x = torch.from_numpy(np.array(windows[b : b + batch]))  # a writable copy
                parts.append(ensemble.member_proba(x).cpu().numpy())
        member_proba = np.concatenate(parts, axis=1)  # (M, W, C)
        members = []
        for i, proba in enumerate(member_proba):
            if ensemble.temperature != 1.0:
                proba = calibrate(proba, ensemble.temperature)
            p = file_verdict(proba, classes)
            members.append(
                {"member": i, "label": classes[int(p.argmax())], "probabilities": p.tolist()}
            )
        return {"members": members, "temperature": ensemble.temperature}
