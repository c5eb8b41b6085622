"""Checkpoints of a training run: one file per member, written atomically, plus the run's params.

A work_dir holds ``member_XX.pt`` (dict of state_dicts + epoch + history + params, loaded with
``weights_only=True``) and ``params.json`` (the params and a fingerprint of the data), which
guards a resume against other settings or other data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from training.params import TrainParams

PARAMS_FILE = "params.json"


def checkpoint_path(work_dir: Path, member: int) -> Path:
    """Where member ``member``'s checkpoint lives in ``work_dir``."""
    return work_dir / f"member_{member:02d}.pt"


def load_checkpoint(work_dir: Path, member: int, device: str | torch.device) -> dict[str, Any]:
    """Member ``member``'s checkpoint dict, tensors mapped to ``device`` (``weights_only``)."""
    return torch.load(checkpoint_path(work_dir, member), map_location=device, weights_only=True)


def checkpoint_epoch(work_dir: Path, member: int) -> int:
    """Last finished epoch recorded for a member (0 if none); mmap, so nothing big is read."""
    path = checkpoint_path(work_dir, member)
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def atomic_save(obj: dict[str, Any], path: Path, fence: Callable[[], None] | None = None) -> None:
    """torch.save to a temporary file then rename, so a kill never leaves half a checkpoint.

    ``fence`` (a training job's claim check) runs between the write and the rename and raises
    to refuse it: a worker whose job was taken over never replaces the new owner's checkpoint.
    """
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    if fence is not None:
        try:
            fence()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)


def check_or_write_params(work_dir: Path, params: TrainParams, data: dict[str, Any]) -> None:
    """Refuse to resume a run made with other params or data; record them for a new run.

    ``data`` is the training data's fingerprint (``training.data.data_fingerprint``). Raises
    ValueError when ``work_dir`` holds another run, or checkpoints without ``params.json``.
    """
    path = work_dir / PARAMS_FILE
    current = {"params": params.to_dict(), "data": data}
    if path.exists():
        stored = json.loads(path.read_text())
        # Fill in parameters added since the run was stored (with their defaults = the old
        # behaviour), so a run made by an older version still resumes.
        stored["params"] = type(params).from_dict(stored.get("params", {})).to_dict()
        if stored != current:
            old, new = stored.get("params", {}), current["params"]
            diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
            if stored.get("data") != data:
                diff.append("training data differ")
            raise ValueError(
                f"{work_dir} holds a run with other settings ({'; '.join(diff)}); "
                "resume with the same params and data, or use a new work_dir"
            )
        return
    if any(work_dir.glob("member_*.pt")):
        raise ValueError(f"{work_dir} has checkpoints but no {PARAMS_FILE}; use a new work_dir")
    tmp = path.with_name(PARAMS_FILE + ".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    os.replace(tmp, path)
