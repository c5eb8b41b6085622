"""Voice features on the fixed mir1k4 split: each family alone, with the log-mel ensemble, cost.

    python -m bench.mir1k4_vocals --out RUN                    # Spleeter vocals, once (~25 min)
    python -m bench.voice_probe features --run RUN             # log-mel + voice features
    python -m bench.voice_probe ensemble --run RUN [--arch resnet10 --members 5 --epochs 6]
    python -m bench.voice_probe fuse --run RUN                 # the table (RUN/voice_probe.json)
    python -m bench.voice_probe mix --run RUN --mix-n 600      # two-voice examples (issue 11.3)
    python -m bench.voice_probe ensemble --run RUN --mix audio|approx [--mix-n 600]
    python -m bench.voice_probe fuse --run RUN --mix audio|approx [--mix-n 600]
    python -m bench.voice_probe from-db --run RUN --data-dir D   # mels + embedding from a cache
    python -m bench.voice_probe ensemble --run RUN --input raw|global|floor [--folds K]
    python -m bench.voice_probe fuse --run RUN --input raw|global|floor [--folds K]

Every step resumes or is cheap to redo. The split is bench/mir1k4_split.py's (singers never
heard in training are the test); the ensemble is trained by the project's own training code
(`training.train.run`, via bench.gpu_suite.train_and_evaluate) on the training singers with its
validation singers held back; the voice head (training/voice_head.py) is fitted on the same
training part, its L2 and fusion weight chosen on the same validation singers.

Issue 11's input-scale and fold experiments (the same split, the same recipe otherwise):
``--input global`` feeds the members ``(x - mean) / std`` with one scalar mean and std of the
training side's log-mels; ``--input floor`` first clamps each window at its own maximum - 80 dB
(the -313 dB floor is the mel of digital silence, pipeline/mel.py) and then standardises alike.
Mixtures (``--mix-multi``) are made from the dB log-mels before the transform (a power sum of
standardised values would mean nothing), so those runs train through ``training.train.run`` with
the split given explicitly (``val_groups``), the same singers and mixtures as the raw run.
``--folds K`` trains K members, member i alone with the training singers of fold i as its
validation (``fold_groups``), so together they saw every training singer; ``fuse`` then chooses
the voice head's L2 and fusion weight on every training singer's out-of-fold probabilities (the
head cross-fitted on the same folds), not on one validation split.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.mir1k4_split import side

if TYPE_CHECKING:
    from torch import nn

    from bench.gpu_suite import Split
    from training.params import TrainParams
    from training.voice_head import VoiceHead

CLASSES = ["none", "male", "female", "multi"]
CHUNK = 64
INPUTS = ("raw", "global", "floor")
FLOOR_BELOW_MAX_DB = 80.0  # --input floor: each window clamped at its maximum minus this


def _rows(data: Path, run: Path) -> list[dict[str, str]]:
    files = (run / "vocals_files.txt").read_text(encoding="utf-8").split()
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        by_file = {r["file"]: r for r in csv.DictReader(f)}
    return [by_file[f] for f in files]


def features(run: Path, frames: int, pitch: bool = True) -> None:
    """RUN/mels.npy (N, 299, 40) float16 and RUN/voice.npy (N, D) float32, resumable; without
    ``pitch`` its 45 columns stay NaN (the default front end computes the embedding alone)."""
    from pipeline.frontend import FrontendConfig
    from pipeline.preprocess import mel_windows
    from pipeline.voice import VoiceConfig, voice_features

    vocals = np.load(run / f"vocals_T{frames}.npy", mmap_mode="r")
    n = vocals.shape[0]
    cfg, vcfg = FrontendConfig(spleeter_frames=frames), VoiceConfig(pitch=True)
    mels = np.lib.format.open_memmap(
        run / "mels.npy",
        mode="r+" if (run / "mels.npy").exists() else "w+",
        dtype=np.float16,
        shape=(n, cfg.n_frames, cfg.n_mels),
    )
    voice = np.lib.format.open_memmap(
        run / "voice.npy",
        mode="r+" if (run / "voice.npy").exists() else "w+",
        dtype=np.float32,
        shape=(n, vcfg.dim),
    )
    done_path = run / "features.done"
    done = int(done_path.read_text()) if done_path.exists() else 0
    dumped = run / f"vocals_T{frames}.done"  # the vocals may still be being written
    n = min(n, int(dumped.read_text())) if dumped.exists() else n
    cost = json.loads((run / "cost.json").read_text()) if (run / "cost.json").exists() else {}
    for lo in range(done, n, CHUNK):
        x = np.asarray(vocals[lo : lo + CHUNK], dtype=np.float32)
        t0 = time.process_time()
        mels[lo : lo + len(x)] = np.stack(mel_windows(list(x), cfg))[:, 0]
        t1 = time.process_time()
        xt = torch.from_numpy(x)
        voice[lo : lo + len(x), : vcfg.dim - 256] = (
            voice_features(xt, VoiceConfig(pitch=True, embedding=False)).numpy()
            if pitch
            else np.nan
        )
        t2 = time.process_time()
        from pipeline.voice import load_voice_encoder, speaker_embedding

        with torch.inference_mode():
            voice[lo : lo + len(x), vcfg.dim - 256 :] = speaker_embedding(
                load_voice_encoder(), xt, vcfg
            ).numpy()
        t3 = time.process_time()
        for key, dt in (("logmel", t1 - t0), ("pitch", t2 - t1), ("embedding", t3 - t2)):
            cost[key] = cost.get(key, 0.0) + dt
        cost["n"] = cost.get("n", 0) + len(x)
        mels.flush()
        voice.flush()
        (run / "cost.json").write_text(json.dumps(cost))
        done_path.write_text(str(lo + len(x)))
        print(
            f"{lo + len(x)}/{n}",
            {k: round(v / cost["n"], 4) for k, v in cost.items() if k != "n"},
            flush=True,
        )


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def from_db(run: Path, data: Path, data_dir: Path, frontend_version: str | None = None) -> None:
    """RUN/vocals_files.txt, mels.npy and voice.npy from a scorer data dir's feature cache.

    Every file of labels.csv the split uses (training or held-out side; a duet straddling the
    two is never used here), matched by the sha256 of its bytes; its log-mel window under
    ``frontend_version`` (default: the default front end's) and its voice features under the
    default VoiceConfig's version of it (the embedding, in columns 45..300; pitch NaN, as
    ``features --no-pitch`` writes). Stops, writing nothing, when any file lacks either."""
    from pipeline.frontend import FrontendConfig
    from pipeline.voice import VoiceConfig
    from scorer.db.engine import make_engine, make_sessionmaker
    from scorer.db.queries import load_features
    from scorer.settings import Settings

    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    used = [r for r in rows if side(r["split_group"]) is not None]
    print(f"{len(used)} of {len(rows)} files on a side of the split ({len(rows) - len(used)} "
          "straddling duets are never used)", flush=True)  # fmt: skip
    shas = [_sha256(data / r["file"]) for r in used]
    fv = frontend_version or FrontendConfig().version
    vv = VoiceConfig().version(fv)
    engine = make_engine(Settings(data_dir=data_dir, database_url=None))
    try:
        with make_sessionmaker(engine)() as s:
            mel_of = load_features(s, shas, fv)
            voice_of = load_features(s, shas, vv)
    finally:
        engine.dispose()
    missing = [r["file"] for r, h in zip(used, shas, strict=True) if h not in mel_of]
    no_voice = [r["file"] for r, h in zip(used, shas, strict=True) if h not in voice_of]
    if missing or no_voice:
        raise SystemExit(
            f"{data_dir}: {len(missing)} of {len(used)} files have no log-mel {fv}, "
            f"{len(no_voice)} no voice features {vv} (e.g. {(missing or no_voice)[:3]}); "
            "nothing written"
        )
    multi = [r["file"] for r, h in zip(used, shas, strict=True) if mel_of[h].shape[0] != 1]
    if multi:
        raise SystemExit(f"{len(multi)} files have several windows (e.g. {multi[:3]}): not mir1k4")
    mels = np.stack([mel_of[h][0] for h in shas]).astype(np.float16)
    vcfg = VoiceConfig(pitch=True)
    voice = np.full((len(shas), vcfg.dim), np.nan, np.float32)
    for k, h in enumerate(shas):
        v = voice_of[h].reshape(-1).astype(np.float32)
        voice[k, vcfg.dim - len(v) :] = v  # the embedding alone, or pitch + embedding
    run.mkdir(parents=True, exist_ok=True)
    np.save(run / "mels.npy", mels)
    np.save(run / "voice.npy", voice)
    (run / "vocals_files.txt").write_text("\n".join(r["file"] for r in used) + "\n", "utf-8")
    (run / "from_db.json").write_text(
        json.dumps({"data_dir": str(data_dir), "frontend": fv, "voice": vv, "n": len(used)})
    )
    print(f"{run}: mels {mels.shape}, voice {voice.shape} from {fv} / {vv}", flush=True)


def clamp_floor(x: np.ndarray, below_max_db: float = FLOOR_BELOW_MAX_DB) -> np.ndarray:
    """Each window clamped from below at its own maximum - ``below_max_db`` (float32): the
    -313 dB digital-silence floor and quiet bands stop dominating the input's scale."""
    x = np.asarray(x, dtype=np.float32)
    return np.maximum(x, x.max(axis=(1, 2), keepdims=True) - below_max_db)


def scalar_stats(x: np.ndarray) -> tuple[float, float]:
    """One mean and one std over every value of ``x`` (float64 sums)."""
    x64 = np.asarray(x, dtype=np.float64)
    return float(x64.mean()), float(x64.std())


class InputScale:
    """``--input``: the members' input from the dB log-mel. ``raw``: as stored; ``global``:
    ``(x - mean) / std``; ``floor``: ``clamp_floor`` then the same (``floor<D>``, e.g.
    ``floor120``: clamped at max - D dB). ``mean``/``std`` are scalars of the (clamped)
    training side, fixed once (``fit``) and applied alike to every array."""

    def __init__(self, kind: str, mean: float = 0.0, std: float = 1.0) -> None:
        self.kind, self.mean, self.std = kind, mean, std
        self.floor_db: float | None = None
        if kind.startswith("floor"):
            self.floor_db = float(kind[5:] or FLOOR_BELOW_MAX_DB)
        elif kind not in INPUTS:
            raise ValueError(f"--input must be one of {INPUTS}, not {kind!r}")

    @classmethod
    def fit(cls, kind: str, x_train: np.ndarray) -> InputScale:
        scale = cls(kind)
        if kind != "raw":
            scale.mean, scale.std = scalar_stats(scale._clamped(x_train))
        return scale

    def _clamped(self, x: np.ndarray) -> np.ndarray:
        if self.floor_db is None:
            return np.asarray(x, np.float32)
        return clamp_floor(x, self.floor_db)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "raw":
            return np.asarray(x)
        return ((self._clamped(x) - self.mean) / self.std).astype(np.float32)

    def describe(self) -> dict[str, float | str | None]:
        return {
            "input": self.kind,
            "floor_below_max_db": self.floor_db,
            "mean": round(self.mean, 4),
            "std": round(self.std, 4),
        }


def _atoms(group: str) -> set[str]:
    return {p for p in group.split("+") if p}


def fold_groups(groups: list[str], y: np.ndarray, k: int) -> list[list[str]]:
    """K disjoint sets of singers covering every singer named in ``groups`` (a pair ``a+b``
    names two); deterministic. Singers in order of size (then name) each go to the fold where
    the cost is least: the sum over classes of (fold count / class total)^2, so that every class
    is spread over the folds, less the share of pair snippets the move keeps whole (a pair
    validates with the fold holding both its singers, or nowhere: ``explicit_split``)."""
    n_classes = int(np.max(y)) + 1 if len(y) else 1
    counts: dict[str, np.ndarray] = {}
    pairs: dict[frozenset[str], int] = {}
    for g, c in zip(groups, y, strict=True):
        names = _atoms(g)
        for a in names:
            counts.setdefault(a, np.zeros(n_classes))
        if len(names) == 1:
            counts[g][int(c)] += 1
        else:
            pairs[frozenset(names)] = pairs.get(frozenset(names), 0) + 1
    total = np.maximum(sum(counts.values(), np.zeros(n_classes)), 1)
    n_pairs = max(sum(pairs.values()), 1)
    load = np.zeros((k, n_classes))
    folds: list[set[str]] = [set() for _ in range(k)]

    def cost(a: str, j: int) -> float:
        kept = sum(m for p, m in pairs.items() if a in p and p - {a} <= folds[j])
        return float((((load[j] + counts[a]) / total) ** 2).sum()) - kept / n_pairs

    for a in sorted(counts, key=lambda a: (-counts[a].sum(), a)):
        j = min(range(k), key=lambda j: (cost(a, j), j))
        load[j] += counts[a]
        folds[j].add(a)
    return [sorted(f) for f in folds]


def fold_of(groups: list[str], folds: list[list[str]]) -> np.ndarray:
    """Each sample's fold (all its singers in it), or -1 for a pair split across two folds."""
    where = {a: j for j, f in enumerate(folds) for a in f}
    out = np.full(len(groups), -1, np.int64)
    for i, g in enumerate(groups):
        js = {where[a] for a in _atoms(g)}
        if len(js) == 1:
            out[i] = js.pop()
    return out


def _fit_val(
    rows: list[dict[str, str]], tr: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The fitting and validation rows of the training singers, as the training code splits."""
    from training.data import group_split
    from training.params import TrainParams

    p = TrainParams()
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    fit_idx, val_idx = group_split(
        [rows[i]["split_group"] for i in tr], y[tr], p.val_fraction, seed
    )
    return tr[fit_idx], tr[val_idx]


def mix(run: Path, data: Path, n: int, seed: int = 0) -> None:
    """RUN/mix<n>_*: n two-voice `multi` examples made from the fitting singers' solo vocals.

    A mixture adds the separated vocals of two solo snippets (male or female) of two different
    fitting singers, the second 0-6 dB quieter: label-preserving (two voices are `multi`) and
    built only from singers the model trains on, so the validation and test singers stay
    unheard. ``mels`` is the log-mel of the summed audio; ``mels_approx`` sums the two cached
    log-mels' powers (what training could do from the feature cache alone, without audio);
    ``voice`` is the speaker embedding of the summed audio (pitch columns NaN)."""
    from pipeline.frontend import FrontendConfig
    from pipeline.preprocess import mel_windows
    from pipeline.voice import VoiceConfig, load_voice_encoder, speaker_embedding

    rows = _rows(data, run)
    tr, _ = _split(rows)
    fit, _ = _fit_val(rows, tr)
    solo = np.array([i for i in fit if rows[i]["label"] in ("male", "female")])
    rng = np.random.default_rng(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        a, b = rng.choice(solo, 2, replace=False)
        if rows[a]["split_group"] != rows[b]["split_group"]:
            pairs.append((int(a), int(b)))
    gain_db = -rng.uniform(0.0, 6.0, n)
    vocals = np.load(run / "vocals_T512.npy", mmap_mode="r")
    cached = np.load(run / "mels.npy", mmap_mode="r")
    cfg, vcfg = FrontendConfig(), VoiceConfig(pitch=True)
    encoder = load_voice_encoder()
    mels = np.zeros((n, cfg.n_frames, cfg.n_mels), np.float16)
    approx = np.zeros_like(mels)
    voice = np.full((n, vcfg.dim), np.nan, np.float32)
    for lo in range(0, n, CHUNK):
        idx = range(lo, min(n, lo + CHUNK))
        g = np.array([10 ** (gain_db[k] / 20) for k in idx], np.float32)
        a = np.asarray(vocals[[pairs[k][0] for k in idx]], np.float32)
        b = np.asarray(vocals[[pairs[k][1] for k in idx]], np.float32)
        x = a + g[:, None] * b
        mels[lo : lo + len(x)] = np.stack(mel_windows(list(x), cfg))[:, 0]
        # log-mel is 20*log10(power): powers add for independent voices
        ma = np.asarray(cached[[pairs[k][0] for k in idx]], np.float32)
        mb = (
            np.asarray(cached[[pairs[k][1] for k in idx]], np.float32)
            + 2 * gain_db[list(idx)][:, None, None]
        )
        approx[lo : lo + len(x)] = (
            20 * np.logaddexp(ma / 20 * np.log(10), mb / 20 * np.log(10)) / np.log(10)
        )
        with torch.inference_mode():
            voice[lo : lo + len(x), vcfg.dim - 256 :] = speaker_embedding(
                encoder, torch.from_numpy(x), vcfg
            ).numpy()
        print(f"mix {lo + len(x)}/{n}", flush=True)
    np.save(run / f"mix{n}_mels.npy", mels)
    np.save(run / f"mix{n}_mels_approx.npy", approx)
    np.save(run / f"mix{n}_voice.npy", voice)
    groups = [f"{rows[a]['split_group']}+{rows[b]['split_group']}" for a, b in pairs]
    (run / f"mix{n}_groups.txt").write_text("\n".join(groups) + "\n", encoding="utf-8")


def _mixed(run: Path, kind: str | None, n: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(mels, voice, groups) of the mixtures of ``kind`` ("audio" or "approx"), or None."""
    if not kind:
        return None
    mels = np.load(run / (f"mix{n}_mels.npy" if kind == "audio" else f"mix{n}_mels_approx.npy"))
    voice = np.load(run / f"mix{n}_voice.npy")
    groups = (run / f"mix{n}_groups.txt").read_text(encoding="utf-8").split()
    return mels, voice, groups


def _name(arch: str, members: int, epochs: int, kind: str | None, n: int) -> str:
    return f"{arch}x{members}x{epochs}" + (f"_mix{kind}{n}" if kind else "")


def _split(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    sides = [side(r["split_group"]) for r in rows]
    train = np.array([i for i, s in enumerate(sides) if s == "train"])
    test = np.array([i for i, s in enumerate(sides) if s == "test"])
    return train, test


def run_name(
    arch: str,
    members: int,
    epochs: int,
    kind: str | None = None,
    n: int = 0,
    mix_multi: int = 0,
    seed: int = 0,
    scale: str = "raw",
    folds: int = 0,
) -> str:
    """The name of an ensemble's files (probs_<name>.npz, voice_probe_<name>.json); raw input
    without folds keeps the names of earlier runs."""
    name = _name(arch, folds or members, epochs, kind, n)
    name += f"_mixmulti{mix_multi}" if mix_multi else ""
    name += f"_seed{seed}" if seed else ""
    name += f"_in{scale}" if scale != "raw" else ""
    return name + (f"_folds{folds}" if folds else "")


def ensemble(
    run: Path,
    data: Path,
    arch: str,
    members: int,
    epochs: int,
    kind: str | None = None,
    n: int = 0,
    mix_multi: int = 0,
    seed: int = 0,
    scale: str = "raw",
    folds: int = 0,
    device: str = "cpu",
) -> None:
    """Train the log-mel ensemble on the training singers (plus the mixtures of ``kind``, as
    `multi`); RUN/probs_<name>.npz. Raw input on today's split goes through bench.gpu_suite as
    before; ``scale`` other than raw, or ``folds``, through ``train_explicit``."""
    from bench.gpu_suite import train_and_evaluate
    from training.params import TrainParams

    _, tr, _, train, test = _training_side(run, data, kind, n)
    params = TrainParams(arch=arch, members=members, epochs=epochs, mix_multi=mix_multi, seed=seed)
    name = run_name(arch, members, epochs, kind, n, mix_multi, seed, scale, folds)
    if scale == "raw" and not folds:
        result = train_and_evaluate(
            name, train, test, params, device, run, deadline=time.monotonic() + 10 * 3600
        )
    else:
        fitted = InputScale.fit(scale, train.x[: len(tr)])  # the real training-side snippets
        if folds:
            result = ensemble_folds(run, name, train, test, params, len(tr), folds, fitted, device)
        else:
            result = ensemble_explicit(run, name, train, test, params, len(tr), fitted, device)
    (run / f"ensemble_{name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["test"], default=str)[:1500])


def _val_singers(groups: list[str], y: np.ndarray, seed: int) -> list[str]:
    """The validation singers ``training.train.run`` picks by itself (``group_split`` at
    ``seed``), checked to give the very same split when passed back as ``val_groups``."""
    from training.data import group_split
    from training.params import TrainParams
    from training.train import explicit_split

    fit, val = group_split(groups, y, TrainParams().val_fraction, seed)
    singers = sorted(set().union(*(_atoms(groups[i]) for i in val)))
    fit2, val2 = explicit_split(groups, len(y), singers)
    assert np.array_equal(fit, fit2) and np.array_equal(val, val2), "the split is not by singer"
    return singers


def _member_proba(
    members: list[nn.Module], x: np.ndarray, normalize: str, device: str
) -> np.ndarray:
    """(M, N, C) each member's softmax on ``x``, 256 windows at a time."""
    from training.ensemble import Ensemble

    ens = Ensemble(members, CLASSES, normalize=normalize, device=device)
    parts = [
        ens.member_proba(torch.from_numpy(np.asarray(x[i : i + 256]))).cpu().numpy()
        for i in range(0, len(x), 256)
    ]
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(members), 0, len(CLASSES)))


def train_explicit(
    params: TrainParams,
    train: Split,  # the training side in dB, the --mix extras included
    val_singers: list[str],
    scale: InputScale,
    device: str = "cpu",
) -> list[nn.Module]:
    """Members trained by ``training.train.run`` on ``train`` with ``val_singers`` as their
    validation, on ``scale``'d input. ``params.mix_multi`` mixtures are made here from the dB
    log-mels exactly as the run would (same training rows, same seed), then scaled; the run
    gets them as training rows and ``mix_multi=0``. Returns the members (nn.Modules)."""
    import dataclasses
    import os
    import tempfile

    from training.mixing import with_mixtures
    from training.train import explicit_split
    from training.train import run as train_run

    fit_idx, _ = explicit_split(train.groups, len(train.y), val_singers)
    x, y, _ = with_mixtures(
        train.x, train.y, train.groups, CLASSES, fit_idx, params.mix_multi, params.seed
    )
    groups = list(train.groups) + [f"\0mixture{k}" for k in range(len(y) - len(train.y))]
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    t0 = time.monotonic()

    def progress(rec: dict) -> None:
        print(
            f"[voice_probe] member {rec['member']} epoch {rec['epoch']}/{params.epochs} at "
            f"{time.monotonic() - t0:.0f} s, val_acc {rec.get('val_acc')}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="voice-probe-", dir=shm) as tmp:
        result = train_run(
            dataclasses.replace(params, mix_multi=0),
            scale(x),
            y,
            groups,
            CLASSES,
            Path(tmp),
            device=device,
            progress=progress,
            show_progress=False,
            amp=None,  # bf16 where native, as scorer train and bench.gpu_suite do
            val_groups=val_singers,
        )
    return result.members


def _training_side(
    run: Path, data: Path, kind: str | None, n: int
) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray, Split, Split]:
    """(rows, tr, te, train Split in dB with the --mix extras, test Split in dB)."""
    from bench.gpu_suite import Split

    rows = _rows(data, run)
    mels = np.load(run / "mels.npy", mmap_mode="r")
    tr, te = _split(rows)
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    g = np.array([r["split_group"] for r in rows])
    shas = np.array([r["file"] for r in rows])
    train = Split(np.asarray(mels[tr]), y[tr], list(g[tr]), list(shas[tr]))
    if (extra := _mixed(run, kind, n)) is not None:
        train = Split(
            np.concatenate([train.x, extra[0]]),
            np.concatenate([train.y, np.full(len(extra[0]), CLASSES.index("multi"))]),
            train.groups + extra[2],
            train.shas + [f"mix:{k}" for k in range(len(extra[0]))],
        )
    test = Split(np.asarray(mels[te]), y[te], list(g[te]), list(shas[te]))
    return rows, tr, te, train, test


def ensemble_explicit(
    run: Path,
    name: str,
    train: Split,
    test: Split,
    params: TrainParams,
    n_real: int,
    scale: InputScale,
    device: str,
) -> dict:
    """One ensemble on today's split (``run``'s own validation singers), through
    ``train_explicit``: probs_<name>.npz in bench.gpu_suite's layout, for ``fuse``."""
    val_singers = _val_singers(train.groups[:n_real], train.y[:n_real], params.seed)
    t0 = time.monotonic()
    members = train_explicit(params, train, val_singers, scale, device)
    train_s = time.monotonic() - t0
    from training.train import explicit_split

    _, val_idx = explicit_split(train.groups[:n_real], n_real, val_singers)  # real ones
    test_p = _member_proba(members, scale(test.x), params.normalize, device)
    val_p = _member_proba(members, scale(train.x[val_idx]), params.normalize, device)
    np.savez_compressed(
        run / f"probs_{name}.npz",
        test=test_p.astype(np.float16),
        test_y=test.y,
        test_shas=np.array(test.shas),
        val=val_p.astype(np.float16),
        val_y=train.y[val_idx],
        val_shas=np.array([train.shas[i] for i in val_idx]),
    )
    return {
        "name": name,
        "params": params.to_dict(),
        **scale.describe(),
        "val_singers": val_singers,
        "train_s": round(train_s, 1),
        "val": _metrics(val_p.mean(0), train.y[val_idx]),
        "test": _metrics(test_p.mean(0), test.y),
    }


def ensemble_folds(
    run: Path,
    name: str,
    train: Split,
    test: Split,
    params: TrainParams,
    n_real: int,
    k: int,
    scale: InputScale,
    device: str,
) -> dict:
    """K members, member i trained alone (seed + i) with fold i's training singers as its
    validation; per member RUN/fold_<name>_m<i>.npz (its out-of-fold and test probabilities;
    resumable member by member), then RUN/probs_<name>.npz: test (K, N, C) and oof (N_oof, C),
    each training snippet's probabilities from the one member that did not train on it."""
    import dataclasses

    from training.train import explicit_split

    folds = fold_groups(train.groups[:n_real], train.y[:n_real], k)
    info: dict = {"name": name, "params": params.to_dict(), **scale.describe(), "folds": folds}
    tests, oof, oof_idx, member = [], [], [], []
    for i, singers in enumerate(folds):
        path = run / f"fold_{name}_m{i}.npz"
        _, val_idx = explicit_split(train.groups[:n_real], n_real, singers)
        if not path.exists():
            t0 = time.monotonic()
            p = dataclasses.replace(params, members=1, seed=params.seed + i)
            members = train_explicit(p, train, singers, scale, device)
            info[f"train_s_m{i}"] = round(time.monotonic() - t0, 1)
            np.savez_compressed(
                path,
                val=_member_proba(members, scale(train.x[val_idx]), p.normalize, device)[0],
                val_shas=np.array([train.shas[j] for j in val_idx]),
                test=_member_proba(members, scale(test.x), p.normalize, device)[0],
                singers=np.array(singers),
            )
        saved = np.load(path)
        assert list(saved["val_shas"]) == [train.shas[j] for j in val_idx], f"{path}: other fold"
        tests.append(saved["test"].astype(np.float32))
        oof.append(saved["val"].astype(np.float32))
        oof_idx.append(val_idx)
        member.append(np.full(len(val_idx), i))
        info[f"val_m{i}"] = _metrics(oof[-1], train.y[val_idx])
    idx = np.concatenate(oof_idx)
    test_p, oof_p = np.stack(tests), np.concatenate(oof)
    np.savez_compressed(
        run / f"probs_{name}.npz",
        test=test_p.astype(np.float16),
        test_y=test.y,
        test_shas=np.array(test.shas),
        oof=oof_p.astype(np.float16),
        oof_y=train.y[idx],
        oof_shas=np.array([train.shas[j] for j in idx]),
        oof_member=np.concatenate(member),
        folds=np.array(json.dumps(folds)),
    )
    n_straddle = n_real - len(idx)
    print(f"out-of-fold: {len(idx)} of {n_real} training snippets ({n_straddle} pairs across "
          "two folds validate nowhere)", flush=True)  # fmt: skip
    return {
        **info,
        "n_oof": len(idx),
        "n_pairs_across_folds": n_straddle,
        "oof": _metrics(oof_p, train.y[idx]),
        "test": _metrics(test_p.mean(0), test.y),
    }


def _metrics(proba: np.ndarray, y: np.ndarray) -> dict[str, float | list[float]]:
    from training.metrics import accuracy, macro_f1, precision_recall_f1

    pred = proba.argmax(1)
    _, rec, _ = precision_recall_f1(y, pred, len(CLASSES))
    return {
        "accuracy": round(accuracy(y, pred), 4),
        "macro_f1": round(macro_f1(y, pred, len(CLASSES)), 4),
        "recall": [round(float(r), 3) for r in rec],
    }


FAMILIES = {
    "pitch statistics (9)": slice(0, 9),
    "pitch stats + profile (45)": slice(0, 45),
    "speaker embedding (256)": slice(45, 301),
    "pitch + embedding (301)": slice(0, 301),
}


def fuse(
    run: Path, data: Path, name: str, kind: str | None = None, n: int = 0, seed: int = 0
) -> None:
    """Each family alone and fused with the ensemble; RUN/voice_probe.json. With mixtures of
    ``kind`` "audio", the voice head also fits on the mixtures (their embedding is of the mixed
    audio); with "approx" only the members saw mixtures."""
    from training.voice_head import fit_linear, fit_voice_head
    from training.voice_head import fuse as fuse_probs

    rows = _rows(data, run)
    voice = np.load(run / "voice.npy")
    tr, te = _split(rows)
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    probs = np.load(run / f"probs_{name}.npz")
    fit, val = _fit_val(rows, tr, seed)  # the members' own split (their seed)
    ens_test = probs["test"].astype(np.float32).mean(0)
    ens_val = probs["val"].astype(np.float32).mean(0)
    files = [r["file"] for r in rows]
    # the same validation singers with or without mixtures (these are never mixed)
    assert list(probs["val_shas"]) == [files[i] for i in val], "validation singers differ"
    assert (probs["test_y"] == y[te]).all() and (probs["val_y"] == y[val]).all()
    fit_x, fit_y = voice[fit], y[fit]
    extra = _mixed(run, kind, n)
    if extra is not None and kind == "audio":  # "approx" is what the feature cache allows:
        # mixtures' log-mels for the members, but no embedding of audio that was never mixed
        fit_x = np.concatenate([fit_x, extra[1]])
        fit_y = np.concatenate([fit_y, np.full(len(extra[1]), CLASSES.index("multi"))])
    table: dict[str, dict] = {"ensemble alone": _metrics(ens_test, y[te])}
    fams = {  # the families computed (pitch is NaN where `features --no-pitch` ran)
        k: c
        for k, c in FAMILIES.items()
        if not np.isnan(voice[fit][:, c]).any() and (extra is None or c.start == 45)
    }
    for fam, cols in fams.items():
        head = fit_voice_head(fit_x[:, cols], fit_y, 4, voice[val][:, cols], y[val], ens_val)
        alone = head.log_proba(torch.from_numpy(voice[te][:, cols])).exp().numpy()
        fused = head.fuse(torch.from_numpy(ens_test), torch.from_numpy(voice[te][:, cols]))
        half = fuse_probs(
            torch.from_numpy(ens_test),
            head.log_proba(torch.from_numpy(voice[te][:, cols])),
            0.5,
        )
        table[f"{fam} alone"] = {**_metrics(alone, y[te]), "l2": head.l2}
        table[f"ensemble + {fam}"] = {
            **_metrics(fused.numpy(), y[te]),
            "w": head.fusion_weight,
        }
        table[f"ensemble + {fam}, w=0.5"] = _metrics(half.numpy(), y[te])
    # A stacked head on [log ensemble probs, voice] fitted on the validation singers, where the
    # ensemble's probabilities are out of sample (the training singers' are not).
    cols = slice(0, 301) if "pitch + embedding (301)" in fams else slice(45, 301)
    stack_x = np.concatenate([np.log(np.clip(ens_val, 1e-6, 1)), voice[val][:, cols]], 1)
    stack_t = np.concatenate([np.log(np.clip(ens_test, 1e-6, 1)), voice[te][:, cols]], 1)
    for l2 in (1e-2, 1e-1) if extra is None else ():
        h = fit_linear(stack_x, y[val], 4, l2)
        p = h.log_proba(torch.from_numpy(stack_t.astype(np.float32))).exp().numpy()
        table[f"stacked head on validation singers (l2={l2})"] = _metrics(p, y[te])
    out = {
        "ensemble": name,
        "mixtures": {"kind": kind, "n": n} if kind else None,
        "n_fit": len(fit_y),
        "n_val": len(val),
        "n_test": len(te),
    }
    _write_table(run, name, out, table)


def _cost(run: Path) -> dict[str, float] | None:
    """CPU seconds per snippet of each feature (RUN/cost.json, written by `features`); None
    where the features came from elsewhere (`from-db`)."""
    if not (run / "cost.json").exists():
        return None
    cost = json.loads((run / "cost.json").read_text())
    return {k: round(v / cost["n"], 4) for k, v in cost.items() if k != "n"}


def _write_table(run: Path, name: str, out: dict, table: dict[str, dict]) -> None:
    out = {**out, "cpu_s_per_snippet": _cost(run), "table": table}
    (run / f"voice_probe_{name}.json").write_text(json.dumps(out, indent=1))
    print(f"{'model':58s} {'acc':>6s} {'mF1':>6s}  recall none/male/female/multi")
    for k, v in table.items():
        extra = {kk: vv for kk, vv in v.items() if kk in ("w", "l2")}
        print(f"{k:58s} {v['accuracy']:6.4f} {v['macro_f1']:6.4f}  {v['recall']} {extra or ''}")
    print("CPU s per snippet:", out["cpu_s_per_snippet"])


def _nll(proba: np.ndarray | torch.Tensor, y: np.ndarray) -> float:
    p = torch.as_tensor(proba).float().clamp_min(1e-12)
    return float(torch.nn.functional.nll_loss(torch.log(p), torch.as_tensor(y)).item())


def fit_head_on_folds(
    x: np.ndarray,
    y: np.ndarray,
    groups: list[str],
    folds: list[list[str]],
    oof_idx: np.ndarray,
    oof_proba: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
) -> tuple[VoiceHead, np.ndarray]:
    """The voice head of a folds run, its choices made out of fold as the members' were.

    For each L2 of the grid the head is fitted once per fold without that fold's singers and
    scores them, so every out-of-fold snippet (``oof_idx``, rows of ``x``) has a head log-prob
    from a head that never saw its singer; L2 minimises their log-loss, the fusion weight the
    fused log-loss with the members' out-of-fold ``oof_proba``, and a temperature is fitted
    there (as ``fit_voice_head`` does on one validation split). The head returned is refitted
    on every training snippet at that L2. ``extra``: (x, y, groups) rows fitted alongside
    (mixtures' embeddings), kept out of a fold's fit when they share its singers."""
    from training.calibration import fit_ensemble_temperature
    from training.train import explicit_split
    from training.voice_head import L2_GRID, WEIGHT_GRID, fit_linear, fuse

    n_classes = len(CLASSES)
    splits = [explicit_split(groups, len(y), f) for f in folds]

    def fit_set(j: int | None) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(y)) if j is None else splits[j][0]
        xs, ys = [x[rows]], [y[rows]]
        if extra is not None:
            keep = np.arange(len(extra[1]))
            if j is not None:
                keep = explicit_split(extra[2], len(extra[1]), folds[j])[0]
            xs.append(extra[0][keep])
            ys.append(extra[1][keep])
        return np.concatenate(xs), np.concatenate(ys)

    y_oof = y[oof_idx]
    best: tuple[float, float, np.ndarray] | None = None
    for l2 in L2_GRID:
        logp = np.zeros((len(y), n_classes), np.float32)
        for j, (_, val) in enumerate(splits):
            head = fit_linear(*fit_set(j), n_classes, l2)
            logp[val] = head.log_proba(torch.from_numpy(x[val].astype(np.float32))).numpy()
        loss = _nll(np.exp(logp[oof_idx]), y_oof)
        if best is None or loss < best[0]:
            best = (loss, l2, logp[oof_idx])
    assert best is not None
    _, l2, lp = best
    ev, lv = torch.from_numpy(oof_proba.astype(np.float32)), torch.from_numpy(lp)
    w = min((_nll(fuse(ev, lv, w), y_oof), w) for w in WEIGHT_GRID)[1]
    head = fit_linear(*fit_set(None), n_classes, l2)
    head.fusion_weight = w
    head.temperature = fit_ensemble_temperature(fuse(ev, lv, w).numpy(), y_oof)
    return head, lp


def fuse_folds(run: Path, data: Path, name: str, kind: str | None = None, n: int = 0) -> None:
    """``fuse`` for a ``--folds`` ensemble: the voice head's L2, fusion weight and temperature
    chosen on the out-of-fold probabilities of every training singer (``fit_head_on_folds``)
    instead of on one validation split; the held-out table in the same form."""
    from training.voice_head import fit_linear
    from training.voice_head import fuse as fuse_probs

    rows = _rows(data, run)
    voice = np.load(run / "voice.npy")
    tr, te = _split(rows)
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    probs = np.load(run / f"probs_{name}.npz")
    if "oof" not in probs:
        raise SystemExit(f"probs_{name}.npz is not a --folds run")
    folds = json.loads(str(probs["folds"]))
    pos = {rows[i]["file"]: k for k, i in enumerate(tr)}
    oof_idx = np.array([pos[s] for s in probs["oof_shas"]], dtype=np.int64)
    y_tr, g_tr, v_tr = y[tr], [rows[i]["split_group"] for i in tr], voice[tr]
    assert (probs["oof_y"] == y_tr[oof_idx]).all() and (probs["test_y"] == y[te]).all()
    oof_p = probs["oof"].astype(np.float32)
    ens_test = probs["test"].astype(np.float32).mean(0)
    mixed = _mixed(run, kind, n) if kind == "audio" else None  # as in `fuse`
    table: dict[str, dict] = {"ensemble alone": _metrics(ens_test, y[te])}
    fams = {
        k: c
        for k, c in FAMILIES.items()
        if not np.isnan(v_tr[:, c]).any() and (kind is None or c.start == 45)
    }
    for fam, cols in fams.items():
        extra = None
        if mixed is not None:
            multi = np.full(len(mixed[1]), CLASSES.index("multi"))
            extra = (mixed[1][:, cols], multi, mixed[2])
        head, _ = fit_head_on_folds(v_tr[:, cols], y_tr, g_tr, folds, oof_idx, oof_p, extra)
        vt = torch.from_numpy(voice[te][:, cols])
        alone = head.log_proba(vt).exp().numpy()
        half = fuse_probs(torch.from_numpy(ens_test), head.log_proba(vt), 0.5)
        table[f"{fam} alone"] = {**_metrics(alone, y[te]), "l2": head.l2}
        table[f"ensemble + {fam}"] = {
            **_metrics(head.fuse(torch.from_numpy(ens_test), vt).numpy(), y[te]),
            "w": head.fusion_weight,
        }
        table[f"ensemble + {fam}, w=0.5"] = _metrics(half.numpy(), y[te])
    # The stacked head of `fuse`, now on every training singer's out-of-fold probabilities.
    cols = slice(0, 301) if "pitch + embedding (301)" in fams else slice(45, 301)
    stack_x = np.concatenate([np.log(np.clip(oof_p, 1e-6, 1)), v_tr[oof_idx][:, cols]], 1)
    stack_t = np.concatenate([np.log(np.clip(ens_test, 1e-6, 1)), voice[te][:, cols]], 1)
    for l2 in (1e-2, 1e-1) if kind is None else ():
        h = fit_linear(stack_x, y_tr[oof_idx], 4, l2)
        p = h.log_proba(torch.from_numpy(stack_t.astype(np.float32))).exp().numpy()
        table[f"stacked head on out-of-fold training singers (l2={l2})"] = _metrics(p, y[te])
    out = {
        "ensemble": name,
        "mixtures": {"kind": kind, "n": n} if kind else None,
        "folds": folds,
        "n_fit": len(tr),
        "n_oof": len(oof_idx),
        "n_test": len(te),
        "members_out_of_fold": _metrics(oof_p, y_tr[oof_idx]),
    }
    _write_table(run, name, out, table)


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["features", "from-db", "mix", "ensemble", "fuse"])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=here.parent / "shared/data/mir1k4")
    p.add_argument("--data-dir", type=Path, help="from-db: the scorer data dir (its scorer.db)")
    p.add_argument("--frontend-version", help="from-db: the log-mel's (default front end's)")
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--no-pitch", action="store_true", help="features: the embedding alone")
    p.add_argument("--mix", choices=["audio", "approx"], default=None)
    p.add_argument("--mix-n", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="ensemble/fuse: TrainParams.seed")
    p.add_argument(
        "--mix-multi", type=int, default=0, help="ensemble/fuse: TrainParams.mix_multi (members)"
    )
    p.add_argument("--input", choices=INPUTS, default="raw", help="ensemble/fuse: input scale")
    p.add_argument(
        "--floor-db",
        type=float,
        default=FLOOR_BELOW_MAX_DB,
        help="--input floor: clamp each window at its max minus this (names carry it if not 80)",
    )
    p.add_argument(
        "--folds", type=int, default=0, help="ensemble/fuse: K fold-wise members (not --members)"
    )
    p.add_argument("--device", default="cpu", help="ensemble: where the members train")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.folds == 1 or a.folds < 0:
        p.error("--folds needs K >= 2")
    scale = a.input
    if a.input == "floor" and a.floor_db != FLOOR_BELOW_MAX_DB:
        scale = f"floor{a.floor_db:g}"
    if a.step == "features":
        features(a.run, a.frames, pitch=not a.no_pitch)
    elif a.step == "from-db":
        if a.data_dir is None:
            p.error("from-db needs --data-dir")
        from_db(a.run, a.data, a.data_dir, a.frontend_version)
    elif a.step == "mix":
        mix(a.run, a.data, a.mix_n)
    elif a.step == "ensemble":
        ensemble(
            a.run, a.data, a.arch, a.members, a.epochs, a.mix, a.mix_n, a.mix_multi, a.seed,
            scale, a.folds, a.device,
        )  # fmt: skip
    else:
        name = run_name(
            a.arch, a.members, a.epochs, a.mix, a.mix_n, a.mix_multi, a.seed, scale, a.folds
        )
        if a.folds:
            fuse_folds(a.run, a.data, name, a.mix, a.mix_n)
        else:
            fuse(a.run, a.data, name, a.mix, a.mix_n, a.seed)


if __name__ == "__main__":
    main()
