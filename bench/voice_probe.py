"""Voice features on the fixed mir1k4 split: each family alone, with the log-mel ensemble, cost.

    python -m bench.mir1k4_vocals --out RUN                    # Spleeter vocals, once (~25 min)
    python -m bench.voice_probe features --run RUN             # log-mel + voice features
    python -m bench.voice_probe ensemble --run RUN [--arch resnet10 --members 5 --epochs 6]
    python -m bench.voice_probe fuse --run RUN                 # the table (RUN/voice_probe.json)
    python -m bench.voice_probe mix --run RUN --mix-n 600      # two-voice examples (issue 11.3)
    python -m bench.voice_probe ensemble --run RUN --mix audio|approx [--mix-n 600]
    python -m bench.voice_probe fuse --run RUN --mix audio|approx [--mix-n 600]

Every step resumes or is cheap to redo. The split is bench/mir1k4_split.py's (singers never
heard in training are the test); the ensemble is trained by the project's own training code
(`training.train.run`, via bench.gpu_suite.train_and_evaluate) on the training singers with its
validation singers held back; the voice head (training/voice_head.py) is fitted on the same
training part, its L2 and fusion weight chosen on the same validation singers.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.mir1k4_split import side

CLASSES = ["none", "male", "female", "multi"]
CHUNK = 64


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
) -> None:
    """Train the log-mel ensemble on the training singers (plus the mixtures of ``kind``, as
    `multi`); RUN/probs_<name>.npz."""
    from bench.gpu_suite import Split, train_and_evaluate
    from training.params import TrainParams

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
    params = TrainParams(arch=arch, members=members, epochs=epochs, mix_multi=mix_multi, seed=seed)
    name = _name(arch, members, epochs, kind, n) + (f"_mixmulti{mix_multi}" if mix_multi else "")
    name += f"_seed{seed}" if seed else ""
    result = train_and_evaluate(
        name, train, test, params, "cpu", run, deadline=time.monotonic() + 10 * 3600
    )
    (run / f"ensemble_{name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["test"], default=str)[:1500])


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
    cost = json.loads((run / "cost.json").read_text())
    out = {
        "ensemble": name,
        "mixtures": {"kind": kind, "n": n} if kind else None,
        "n_fit": len(fit_y),
        "n_val": len(val),
        "n_test": len(te),
        "cpu_s_per_snippet": {k: round(v / cost["n"], 4) for k, v in cost.items() if k != "n"},
        "table": table,
    }
    (run / f"voice_probe_{name}.json").write_text(json.dumps(out, indent=1))
    print(f"{'model':58s} {'acc':>6s} {'mF1':>6s}  recall none/male/female/multi")
    for k, v in table.items():
        extra = {kk: vv for kk, vv in v.items() if kk in ("w", "l2")}
        print(f"{k:58s} {v['accuracy']:6.4f} {v['macro_f1']:6.4f}  {v['recall']} {extra or ''}")
    print("CPU s per snippet:", out["cpu_s_per_snippet"])


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["features", "mix", "ensemble", "fuse"])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=here.parent / "shared/data/mir1k4")
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
    a = p.parse_args()
    torch.manual_seed(0)
    if a.step == "features":
        features(a.run, a.frames, pitch=not a.no_pitch)
    elif a.step == "mix":
        mix(a.run, a.data, a.mix_n)
    elif a.step == "ensemble":
        ensemble(a.run, a.data, a.arch, a.members, a.epochs, a.mix, a.mix_n, a.mix_multi, a.seed)
    else:
        name = _name(a.arch, a.members, a.epochs, a.mix, a.mix_n)
        name += f"_mixmulti{a.mix_multi}" if a.mix_multi else ""
        name += f"_seed{a.seed}" if a.seed else ""
        fuse(a.run, a.data, name, a.mix, a.mix_n, a.seed)


if __name__ == "__main__":
    main()
