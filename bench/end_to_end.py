"""The naive path against scorer's embedded pipeline, on the same snippet files and model.

Naive, as a first script would do it: per file, build a fresh Spleeter (weights read from disk),
separate, featurise, run the members one after another at batch size 1, and write the result
with one INSERT and one COMMIT per row. Scorer: worker.embedded.run (separator and ensemble
loaded once, batches of 8 snippets / 64 windows, one transaction per batch; the ensemble in
bf16 where the CPU runs it natively, with a float32 row beside it then), and scorer under
SCORER_PROFILE=fast (a 1-member student, Spleeter's segment by need). Target >= 10x.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

import pipeline.preprocess
from bench import embedded_run, fixtures
from bench.timing import Stopwatch, once, speedup
from pipeline.decode import decode
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import featurize
from pipeline.spleeter import Separator
from scorer.db.models import FILE_WINDOW, ModelVersion, Prediction
from training.ensemble import load_ensemble, native_bf16
from training.model import prepare_input
from worker.runtime import configure_threads

_SNIPPET = text(
    "INSERT INTO snippets (sha256, source_path, size_bytes, status, attempts, created_at,"
    " updated_at) VALUES (:sha, :path, :size, 'scored', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    " ON CONFLICT (sha256) DO NOTHING"
)
_PREDICTION = text(
    "INSERT INTO predictions (sha256, window_index, start_s, model_version_id, probabilities,"
    " label, confidence, disagreement, entropy, created_at) VALUES (:sha, :w, :start, :mv,"
    " :probs, :label, :conf, 0, 0, CURRENT_TIMESTAMP)"
    " ON CONFLICT (sha256, window_index, model_version_id) DO NOTHING"
)


def _naive(
    engine: Engine, paths: list[Path], model_dir: Path, mv_id: int, cfg: FrontendConfig
) -> tuple[dict[str, np.ndarray], Stopwatch]:
    """{sha: file probabilities}, and where the time went."""
    sw = Stopwatch()
    with sw.section("model_loading"):
        members = load_ensemble(model_dir, "cpu", mode="loop").members
    out: dict[str, np.ndarray] = {}
    with engine.connect() as conn, sw.wrap(pipeline.preprocess, "separate_vocals", "separation"):
        for path in paths:
            with sw.section("db_decode_other"):
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                audio = decode(data)
            with sw.section("model_loading"):
                separator = Separator(cfg.spleeter_frames).load_official_weights().eval()
            with sw.section("_featurize"):
                windows = featurize([audio], cfg, separator)[0]
            with sw.section("inference"), torch.no_grad():
                probs = []
                for w in windows:
                    x = prepare_input(torch.from_numpy(w[None]))
                    p = [torch.softmax(m(x), dim=-1)[0] for m in members]
                    probs.append(torch.stack(p).mean(dim=0).numpy())
            with sw.section("db"):
                conn.execute(_SNIPPET, {"sha": sha, "path": str(path), "size": len(data)})
                conn.commit()
                verdict = np.mean(probs, axis=0)
                for i, p in [*enumerate(probs), (FILE_WINDOW, verdict)]:
                    k = int(np.argmax(p))
                    conn.execute(
                        _PREDICTION,
                        {"sha": sha, "w": i, "start": max(i, 0) * 3.0, "mv": mv_id,
                         "probs": str([round(float(v), 6) for v in p]),
                         "label": fixtures.CLASSES[k], "conf": float(p[k])},
                    )  # fmt: skip
                    conn.commit()
            out[sha] = verdict
    sw.seconds["features"] = sw.seconds.pop("_featurize") - sw.seconds["separation"]
    return out, sw


def _embedded_probs(engine: Engine, mv_id: int) -> dict[str, np.ndarray]:
    with Session(engine) as s:
        rows = s.execute(
            select(Prediction.sha256, Prediction.probabilities)
            .where(Prediction.model_version_id == mv_id)
            .where(Prediction.window_index == FILE_WINDOW)
        )
        return {sha: np.asarray(p, dtype=np.float64) for sha, p in rows}


# quick / full: (snippets, members, arch). Module-level so a one-off run can change them.
SIZES: dict[bool, tuple[int, int, str]] = {True: (12, 5, "resnet18"), False: (200, 20, "resnet34")}


def _embedded_one_thread(
    data_dir: Path, paths: list[Path], members: int, arch: str
) -> dict[str, Any]:
    """The embedded run again with SCORER_TORCH_THREADS=1, as the CLI would configure it:
    docs/SEPARATION.md finds one thread per process faster on a busy machine."""
    settings = fixtures.embedded_settings(data_dir).model_copy(update={"torch_threads": 1})
    engine = fixtures.sqlite_engine(settings)
    before = torch.get_num_threads()
    try:
        fixtures.register_model(engine, settings, "m", members, arch, seed=3)
        configure_threads(settings)
        return embedded_run.run(settings, engine, paths)
    finally:
        torch.set_num_threads(before)
        engine.dispose()


def _embedded_variant(
    data_dir: Path, paths: list[Path], members: int, arch: str, update: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The embedded run again with other settings (e.g. SCORER_SPLEETER_FRAMES=256, another
    front end, or SCORER_INFER_BF16=off), on a fresh database; its run and file probabilities."""
    settings = fixtures.embedded_settings(data_dir).model_copy(update=update)
    engine = fixtures.sqlite_engine(settings)
    try:
        mv_id = fixtures.register_model(engine, settings, "m", members, arch, seed=3)
        return embedded_run.run(settings, engine, paths), _embedded_probs(engine, mv_id)
    finally:
        engine.dispose()


STUDENT_ARCH = "resnet10"  # the distilled student of docs/RESULTS.md 0b


def _fast_profile(
    data_dir: Path, paths: list[Path], members: int, arch: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The embedded run under SCORER_PROFILE=fast: the same teacher (trained at T = 512) is the
    active model and has a 1-member student (`distilled_from` it, as `scorer distill` records
    it), so the profile scores with the student, on features separated by need (T = 192 for
    these clips), bf16 where native. Random weights: a trained student runs exactly as fast."""
    from scorer.settings import Settings

    settings = Settings(
        data_dir=data_dir, device="cpu", broker_url=None, database_url=None, profile="fast"
    )
    engine = fixtures.sqlite_engine(settings)
    try:
        sid = fixtures.register_model(
            engine, settings, "m-student", 1, STUDENT_ARCH, seed=4, frontend=FrontendConfig()
        )
        fixtures.register_model(engine, settings, "m", members, arch, 3, FrontendConfig())
        with Session(engine) as s, s.begin():
            student = s.get(ModelVersion, sid)
            assert student is not None
            student.params = {**student.params, "distilled_from": "m"}
        out = embedded_run.run(settings, engine, paths)
        if out["summary"].model_name != "m-student":
            raise RuntimeError(f"the fast profile scored with {out['summary'].model_name}")
        config = {"student": f"1 x {STUDENT_ARCH}", "T": settings.spleeter_frames}
        return out, config
    finally:
        engine.dispose()


def run(quick: bool) -> dict[str, Any]:
    """Both paths over the same N files, each on its own fresh SQLite file, same weights."""
    n, members, arch = SIZES[quick]
    bf16 = native_bf16("cpu")  # scorer's default (SCORER_INFER_BF16=auto) infers in bf16 here
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        paths = fixtures.write_wavs(Path(tmp) / "audio", n, seed=2)
        settings = fixtures.embedded_settings(Path(tmp) / "scorer")
        engine = fixtures.sqlite_engine(settings)
        naive_settings = fixtures.embedded_settings(Path(tmp) / "naive")
        naive_engine = fixtures.sqlite_engine(naive_settings)
        try:
            mv_id = fixtures.register_model(engine, settings, "m", members, arch, seed=3)
            with Session(engine) as s:
                mv = s.get(ModelVersion, mv_id)
                assert mv is not None
                cfg = FrontendConfig.from_dict(mv.frontend)
            # The naive path runs the members saved above; its own row is only for the foreign key.
            naive_mv = fixtures.register_model(naive_engine, naive_settings, "m", 1, "resnet10", 0)
            model_dir = settings.resolved_model_dir / "m"
            (naive_probs, sw), naive_s, naive_cpu = once(
                lambda: _naive(naive_engine, paths, model_dir, naive_mv, cfg)
            )
            emb = embedded_run.run(settings, engine, paths)
            emb_probs = _embedded_probs(engine, mv_id)
            one = _embedded_one_thread(Path(tmp) / "scorer_t1", paths, members, arch)
            t256, _ = _embedded_variant(
                Path(tmp) / "scorer_T256", paths, members, arch, {"spleeter_frames": 256}
            )
            fast, fast_config = _fast_profile(Path(tmp) / "scorer_fast", paths, members, arch)
            f32 = None
            if bf16:  # the default ran in bf16: the float32 run too, like for like with naive
                f32, f32_probs = _embedded_variant(
                    Path(tmp) / "scorer_f32", paths, members, arch, {"infer_bf16": "off"}
                )
        finally:
            engine.dispose()
            naive_engine.dispose()
    if emb["summary"].scored != n or len(naive_probs) != n:
        raise RuntimeError(f"scored {emb['summary'].scored} (scorer), {len(naive_probs)} (naive)")

    def diff(probs: dict[str, np.ndarray]) -> float:
        return max(float(np.abs(naive_probs[k] - probs[k]).max()) for k in naive_probs)

    ratio = speedup(naive_s, emb["wall_s"])
    naive_breakdown = {k: round(v, 3) for k, v in sw.seconds.items()}
    naive_breakdown["unaccounted"] = round(naive_s - sum(sw.seconds.values()), 3)
    rows = [
        {"path": "naive", "wall_s": round(naive_s, 2), "cpu_s": round(naive_cpu, 2),
         "snippets_per_s": round(n / naive_s, 3), **naive_breakdown},
        {"path": "scorer embedded", "wall_s": round(emb["wall_s"], 2),
         "cpu_s": round(emb["cpu_s"], 2), "snippets_per_s": round(n / emb["wall_s"], 3),
         **emb["breakdown"]},
        {"path": "scorer embedded, 1 thread", "wall_s": round(one["wall_s"], 2),
         "cpu_s": round(one["cpu_s"], 2), "snippets_per_s": round(n / one["wall_s"], 3),
         **one["breakdown"]},
        {"path": "scorer embedded, T = 256", "wall_s": round(t256["wall_s"], 2),
         "cpu_s": round(t256["cpu_s"], 2), "snippets_per_s": round(n / t256["wall_s"], 3),
         **t256["breakdown"]},
        {"path": f"scorer embedded, SCORER_PROFILE=fast ({fast_config['student']} student, "
                 "T by need)", "wall_s": round(fast["wall_s"], 2),
         "cpu_s": round(fast["cpu_s"], 2), "snippets_per_s": round(n / fast["wall_s"], 3),
         **fast["breakdown"]},
    ]  # fmt: skip
    ratios = {
        "embedded_vs_naive": ratio,
        "embedded_vs_naive_cpu": speedup(naive_cpu, emb["cpu_s"]),
        "embedded_1_thread_vs_naive": speedup(naive_s, one["wall_s"]),
        "embedded_T256_vs_naive_T512": speedup(naive_s, t256["wall_s"]),
        "fast_profile_vs_naive": speedup(naive_s, fast["wall_s"]),
    }
    notes = [
        f"target >= 10x: {'met' if ratio >= 10 else 'NOT met'} ({ratio}x)",
        f"file probabilities, naive vs scorer: max abs diff {diff(emb_probs):.2e}"
        + (" (scorer in bf16, naive in float32)" if bf16 else ""),
        "the bench's random members saturate (softmax ~0/1 on raw log-mels): the agreement shows "
        "equal verdicts, not bf16's rounding, which docs/RESULTS.md measures on a trained model",
    ]
    if f32 is not None:
        rows.insert(2, {
            "path": "scorer embedded, float32", "wall_s": round(f32["wall_s"], 2),
            "cpu_s": round(f32["cpu_s"], 2), "snippets_per_s": round(n / f32["wall_s"], 3),
            **f32["breakdown"]})  # fmt: skip
        ratios["embedded_float32_vs_naive"] = speedup(naive_s, f32["wall_s"])
        notes.append(f"file probabilities, naive vs scorer float32: max abs diff "
                     f"{diff(f32_probs):.2e}")  # fmt: skip
    return {
        "config": {"snippets": n, "members": members, "arch": arch, "target": ">= 10x",
                   "T": cfg.spleeter_frames, "torch_threads": torch.get_num_threads(),
                   "scorer_bf16": bf16},
        "rows": rows,
        "ratios": ratios,
        "notes": [
            *notes,
            "naive model_loading includes its Spleeter build, once per file",
            "'1 thread' = the same embedded run with SCORER_TORCH_THREADS=1 (fresh database)",
            "'T = 256' = SCORER_SPLEETER_FRAMES=256, another front end (not like for like)",
            "'fast' = SCORER_PROFILE=fast: the teacher's newest student (1 member) on features "
            "separated by need, bf16 where native; its accuracy cost is in docs/RESULTS.md "
            "(0b: the student; the segment section: T by need)",
        ],
    }  # fmt: skip
