"""Where the time of one 3 s snippet goes, stage by stage, against what this CPU can do.

``python -m bench.stages [--quick] [--threads N] [--out F.json]`` (also ``python -m bench --only
stages``). In one process, at one thread count:

1. Peak: the best GFLOP/s of square float32 and bf16 matrix products (bf16 marked emulated where
   the CPU has no native bf16, ``training.ensemble.native_bf16``).
2. Per stage of scoring a snippet, on the project's own code path: ms per snippet (best and
   median after warm-up), GFLOP per snippet (``FlopCounterMode``; LSTMs, which it does not count,
   by formula), achieved GFLOP/s and % of the peak of its dtype; each torch stage in float32 and
   under bf16 autocast (how the ensemble runs bf16). Decode, resample and DB writes: time only.
3. First call against steady state per dtype, each dtype in a fresh process (the "bf16 warm-up
   per process" question), and the first call at a new batch size in a warm process.
4. Spleeter: a profiler breakdown in float32 and bf16, and U-Net variants that might close the
   gap, with their vocals' SDR against float32 (bench/stages_spleeter.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench import fixtures
from bench import stages_spleeter as sps
from bench.timing import machine, measure
from training.ensemble import Ensemble, native_bf16
from training.model import build_member

DTYPES = ("float32", "bf16")
STAGES = (
    "decode (16 kHz mono mp3)",
    "resample 16 -> 44.1 kHz (Spleeter input)",
    "spleeter T=512",
    "spleeter T=by need (192)",
    "resample 44.1 -> 16 kHz (vocals)",
    "log-mel",
    "voice embedding",
    "member resnet34, batch 1",
    "member resnet34, batch 32",
    "member resnet10, batch 1",
    "member resnet10, batch 32",
    "db writes (batch of 8)",
)
TORCH_STAGES = {s for s in STAGES if not s.startswith(("decode", "resample", "db"))}


def sizes(quick: bool) -> dict[str, Any]:
    """Repetitions and sizes; quick keeps the whole run to tens of seconds on one core."""
    if quick:
        return {
            "peak_n": (256, 512),
            "peak_repeat": 2,
            "repeat": 1,
            "warmup": 1,
            "profile_frames": (spl_by_need(),),
            "first_call": ("resnet10:8",),
            "variants": sps.VARIANTS[:1] + sps.VARIANTS[2:3] + sps.VARIANTS[5:6],
        }
    return {
        "peak_n": (1024, 2048, 4096),
        "peak_repeat": 3,
        "repeat": 7,
        "warmup": 2,
        "profile_frames": (512, spl_by_need()),
        "variants": sps.VARIANTS,
        "first_call": ("spleeter-512", "spleeter-0", "resnet18:12", "resnet34:32"),
    }


def spl_by_need() -> int:
    from pipeline.spleeter import BY_NEED

    return BY_NEED


# --- peak ---------------------------------------------------------------------------------------


def matmul_flops(m: int, n: int, k: int) -> int:
    """Multiply-adds of an (m, k) @ (k, n) product, counted as 2 FLOPs each."""
    return 2 * m * n * k


def peak(dtype: torch.dtype, ns: Sequence[int], repeat: int) -> dict[str, Any]:
    """Best GFLOP/s over square products of the sizes `ns` (best of `repeat` each)."""
    best: dict[str, Any] = {"gflops": 0.0}
    g = torch.Generator().manual_seed(0)
    for n in ns:
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        t = measure(lambda a=a, b=b: a @ b, repeat=repeat, warmup=1)
        gflops = matmul_flops(n, n, n) / t.best / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": round(gflops, 1), "n": n, "best_ms": round(t.best * 1e3, 2)}
    return best


# --- FLOPs --------------------------------------------------------------------------------------


def lstm_flops(lstm: nn.LSTM, batch: int, steps: int) -> int:
    """FLOPs of a unidirectional LSTM's gate products: per layer and step 4H x (I + H) MACs
    (FlopCounterMode does not count the fused LSTM op). Elementwise gate maths left out, as for
    the counted ops."""
    h, total = lstm.hidden_size, 0
    for layer in range(lstm.num_layers):
        i = lstm.input_size if layer == 0 else h
        total += matmul_flops(batch * steps, 4 * h, i + h)
    return total


def count_flops(fn: Callable[[], object], module: nn.Module | None = None) -> int:
    """FLOPs of one call of `fn` (matmuls and convolutions, FlopCounterMode), plus the LSTMs of
    `module` by formula."""
    extra: list[int] = []
    hooks = []
    for m in module.modules() if module is not None else ():
        if isinstance(m, nn.LSTM):

            def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], _out: object) -> None:
                x = args[0]
                extra.append(lstm_flops(mod, x.shape[0], x.shape[1]))  # batch_first

            hooks.append(m.register_forward_hook(hook))
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for h in hooks:
            h.remove()
    return int(counter.get_total_flops()) + sum(extra)


# --- the stages ---------------------------------------------------------------------------------


def snippet() -> tuple[bytes, np.ndarray, np.ndarray]:
    """(16 kHz mono MP3 bytes like mir1k4's, its decoded samples, the 44.1 kHz stereo clip)."""
    import soundfile as sf

    from pipeline.resample import resample

    clip = fixtures.clips(1, seed=5)[0]  # (2, 132300) float32 at 44.1 kHz
    mono16 = resample(clip.mean(axis=0), 44_100, 16_000)
    buf = io.BytesIO()
    sf.write(buf, mono16, 16_000, format="MP3")
    return buf.getvalue(), mono16, clip


def autocast(enabled: bool) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _db_writer(tmp: Path, batch: int) -> Callable[[], None]:
    """One batch of `batch` snippets' writes, as the embedded pipeline makes them: snippets and
    paths; features (log-mel and voice) and status; predictions (a window + the file verdict) and
    status. Three transactions, fresh shas every call."""
    from sqlalchemy.orm import Session

    from scorer.db import queries
    from scorer.db.models import FILE_WINDOW, SnippetStatus

    settings = fixtures.embedded_settings(tmp)
    engine = fixtures.sqlite_engine(settings)
    mv = fixtures.register_model(engine, settings, "m", 1, "resnet10", seed=0)
    mel = np.zeros((1, 299, 40), dtype=np.float16)
    voice = np.zeros((1, 1, 256), dtype=np.float16)
    pred = {
        "start_s": 0.0,
        "model_version_id": mv,
        "probabilities": [0.1, 0.2, 0.3, 0.4],
        "label": "multi",
        "confidence": 0.4,
        "disagreement": 0.1,
        "entropy": 1.2,
    }

    def write() -> None:
        shas = [uuid.uuid4().hex * 2 for _ in range(batch)]
        with Session(engine) as s, s.begin():
            rows = [{"sha256": h, "source_path": f"/a/{h}.mp3", "size_bytes": 24_000} for h in shas]
            queries.add_snippets(s, rows)
            queries.add_source_paths(s, [(f"/a/{h}.mp3", h) for h in shas])
        with Session(engine) as s, s.begin():
            for h in shas:
                queries.store_features(s, h, "fe-bench", mel)
                queries.store_features(s, h, "vf-bench", voice)
                queries.set_status(s, [h], SnippetStatus.preprocessed, attempts=0, n_windows=1)
        with Session(engine) as s, s.begin():
            rows = [
                {"sha256": h, "window_index": w, **pred} for h in shas for w in (0, FILE_WINDOW)
            ]
            queries.upsert_predictions(s, rows)
            queries.set_status(s, shas, SnippetStatus.scored, attempts=0)

    return write


def _member(arch: str) -> Ensemble:
    torch.manual_seed(0)
    return Ensemble([build_member(len(fixtures.CLASSES), arch)], fixtures.CLASSES, device="cpu")


def stage_calls(tmp: Path) -> dict[str, tuple[Callable[[bool], object], int, nn.Module | None]]:
    """{stage: (call(bf16), snippets per call, module whose LSTMs to count)}."""
    from pipeline.decode import decode, downmix
    from pipeline.frontend import FrontendConfig
    from pipeline.preprocess import spleeter_input, window_mels
    from pipeline.resample import resample
    from pipeline.spleeter import BY_NEED, load_separator
    from pipeline.voice import VoiceConfig, load_voice_encoder, voice_features

    mp3, _, clip = snippet()
    audio = decode(mp3)
    cfg, voice = FrontendConfig(), VoiceConfig()
    window = np.ascontiguousarray(resample(downmix(clip), 44_100, 16_000)[None, :48_000])
    wave, encoder = torch.from_numpy(window), load_voice_encoder("cpu")  # voice_features' key
    seps = {512: load_separator("cpu", 512), BY_NEED: load_separator("cpu", BY_NEED)}
    members = {arch: _member(arch) for arch in ("resnet34", "resnet10")}
    feats = {b: torch.from_numpy(np.repeat(window_mels(window, cfg), b, axis=0)) for b in (1, 32)}
    write = _db_writer(tmp, 8)

    def spleeter(frames: int) -> Callable[[bool], object]:
        return lambda bf16: sps.separate(seps[frames], clip, bf16)

    def member(arch: str, b: int) -> Callable[[bool], object]:
        ens = members[arch]

        def call(bf16: bool) -> object:
            ens.amp = bf16
            return ens.member_logits(feats[b])

        return call

    def torch_stage(fn: Callable[[], object]) -> Callable[[bool], object]:
        def call(bf16: bool) -> object:
            with autocast(bf16):
                return fn()

        return call

    return {
        STAGES[0]: (lambda _: decode(mp3), 1, None),
        STAGES[1]: (lambda _: spleeter_input(audio), 1, None),
        STAGES[2]: (spleeter(512), 1, None),
        STAGES[3]: (spleeter(BY_NEED), 1, None),
        STAGES[4]: (lambda _: resample(downmix(clip), 44_100, 16_000), 1, None),
        STAGES[5]: (torch_stage(lambda: window_mels(window, cfg)), 1, None),
        STAGES[6]: (torch_stage(lambda: voice_features(wave, voice).float()), 1, encoder),
        STAGES[7]: (member("resnet34", 1), 1, None),
        STAGES[8]: (member("resnet34", 32), 32, None),
        STAGES[9]: (member("resnet10", 1), 1, None),
        STAGES[10]: (member("resnet10", 32), 32, None),
        STAGES[11]: (lambda _: write(), 8, None),
    }


def stage_rows(size: dict[str, Any], peaks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (stage, dtype): float32 for every stage, bf16 for the torch ones."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        for stage, (call, per, module) in stage_calls(Path(tmp)).items():
            torch_stage = stage in TORCH_STAGES
            flops = count_flops(lambda c=call: c(False), module) if torch_stage else None
            for dtype in DTYPES if torch_stage else DTYPES[:1]:
                bf16 = dtype == "bf16"
                t = measure(
                    lambda c=call, b=bf16: c(b), repeat=size["repeat"], warmup=size["warmup"]
                )
                row: dict[str, Any] = {
                    "stage": stage,
                    "dtype": dtype if torch_stage else "-",
                    "ms_per_snippet": round(t.best / per * 1e3, 3),
                    "median_ms_per_snippet": round(t.median / per * 1e3, 3),
                }
                if flops is not None:
                    gflops = flops / t.best / 1e9
                    row["flops_per_call"] = flops
                    row["gflop_per_snippet"] = round(flops / per / 1e9, 4)
                    row["gflops"] = round(gflops, 1)
                    row["pct_of_peak"] = round(100 * gflops / peaks[dtype]["gflops"], 1)
                rows.append(row)
    return rows


# --- first call ---------------------------------------------------------------------------------


def first_call(kind: str, dtype: str, repeat: int) -> dict[str, Any]:
    """In this (fresh) process: build `kind`, time its first call, then steady calls, then (for
    a member) the first call at a new batch size. kind: ``spleeter-<T>`` or ``<arch>:<batch>``."""
    bf16 = dtype == "bf16"
    t0 = time.perf_counter()
    if kind.startswith("spleeter"):
        from pipeline.spleeter import load_separator

        sep = load_separator("cpu", int(kind.split("-")[1]))
        clip = fixtures.clips(1, seed=5)[0]

        def call(b: int = 1) -> object:
            return sps.separate(sep, clip, bf16)
    else:
        arch, batch = kind.split(":")
        ens = _member(arch)
        ens.amp = bf16
        g = torch.Generator().manual_seed(0)
        x = torch.randn(int(batch) + 1, 1, 299, 40, generator=g) * 20 - 60

        def call(b: int = int(batch)) -> object:
            return ens.member_logits(x[:b])

    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    steady = measure(call, repeat=repeat, warmup=0)
    out = {
        "stage": kind,
        "dtype": dtype,
        "build_s": round(build, 3),
        "first_call_s": round(first, 4),
        "steady_best_s": round(steady.best, 4),
        "steady_median_s": round(steady.median, 4),
        "first_minus_steady_s": round(first - steady.best, 4),
        "first_over_steady": round(first / steady.best, 2),
    }
    if not kind.startswith("spleeter"):
        t0 = time.perf_counter()
        call(int(kind.split(":")[1]) + 1)
        out["new_batch_size_first_call_s"] = round(time.perf_counter() - t0, 4)
    return out


def first_call_rows(kinds: Sequence[str], threads: int, repeat: int) -> list[dict[str, Any]]:
    """`first_call` for each kind and dtype, each in a fresh interpreter."""
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for kind in kinds:
        for dtype in DTYPES:
            cmd = [
                sys.executable,
                "-m",
                "bench.stages",
                "--threads",
                str(threads),
                "--first-call",
                kind,
                dtype,
                "--repeat",
                str(repeat),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                rows.append({"stage": kind, "dtype": dtype, "error": proc.stderr[-500:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


# --- Spleeter: why bf16 gains little ------------------------------------------------------------


PROFILED = (
    "float32",
    "bf16 autocast (as tried)",
    "bf16 U-Nets end to end",
    "bf16 autocast, transposed convs as matmul + fold",
)


def sdr_clips(audio: Sequence[Path]) -> list[np.ndarray]:
    """Stereo 44.1 kHz clips for the variants' SDR: the given files (decoded and resampled as
    the pipeline does), else one synthesised clip."""
    from pipeline.decode import decode
    from pipeline.preprocess import spleeter_input

    if not audio:
        return [fixtures.clips(1, seed=5)[0]]
    return [spleeter_input(decode(Path(p).read_bytes())) for p in audio]


def spleeter_analysis(
    size: dict[str, Any], frames: int, clips: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Profiler breakdowns, and the variants' time on the first clip (repeats interleaved across
    variants, so a change of load hits all alike) and vocals SDR vs float32 on every clip
    (median and minimum), at segment `frames`."""
    from pipeline.spleeter import load_separator

    base = load_separator("cpu", frames)
    clip = clips[0]
    seps = {name: sps.variant(base, name) for name in size["variants"]}
    times: dict[str, list[float]] = {name: [] for name in seps}
    for _ in range(size["warmup"]):
        for sep, amp in seps.values():
            sps.separate(sep, clip, amp)
    for _ in range(size["repeat"]):
        for name, (sep, amp) in seps.items():
            t0 = time.perf_counter()
            sps.separate(sep, clip, amp)
            times[name].append(time.perf_counter() - t0)
    want = [sps.separate(base, c, False) for c in clips]
    base_s = min(times[size["variants"][0]])
    variants, profiles = [], {}
    for name, (sep, amp) in seps.items():
        sdr = [sps.sdr_db(w, sps.separate(sep, c, amp)) for w, c in zip(want, clips, strict=True)]
        variants.append(
            {
                "variant": name,
                "ms": round(min(times[name]) * 1e3, 1),
                "median_ms": round(statistics.median(times[name]) * 1e3, 1),
                "speedup_vs_float32": round(base_s / min(times[name]), 2),
                "vocals_sdr_vs_float32_db": float(statistics.median(sdr)),
                "min_sdr_db": float(min(sdr)),
            }
        )
        if name in PROFILED:
            profiles[name] = sps.breakdown(lambda s=sep, a=amp: sps.separate(s, clip, a))
    return {"frames": frames or "by need", "clips": len(clips), "profiles": profiles,
            "variants": variants}  # fmt: skip


def conv_note(sp: dict[str, Any]) -> str:
    """Where bf16 autocast gains and loses in Spleeter's profile at one T."""
    f32, bf16 = sp["profiles"]["float32"]["ms"], sp["profiles"]["bf16 autocast (as tried)"]["ms"]

    def rest(ms: dict[str, float]) -> float:
        return round(sum(ms.values()) - ms["conv2d"] - ms["conv_transpose2d"], 1)

    return (
        f"Spleeter T={sp['frames']}, float32 -> bf16 autocast, self ms: conv2d "
        f"{f32['conv2d']} -> {bf16['conv2d']}, conv_transpose2d {f32['conv_transpose2d']} -> "
        f"{bf16['conv_transpose2d']}, the rest {rest(f32)} -> {rest(bf16)}"
    )


# --- run, print ---------------------------------------------------------------------------------


def run(quick: bool, threads: int | None = None, audio: Sequence[Path] = ()) -> dict[str, Any]:
    """The whole measurement in this process (first calls in child processes)."""
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    size = sizes(quick)
    native = native_bf16("cpu")
    peaks = {
        "float32": peak(torch.float32, size["peak_n"], size["peak_repeat"]),
        "bf16": peak(torch.bfloat16, size["peak_n"], size["peak_repeat"]),
    }
    peaks["bf16"]["native"] = native
    rows = stage_rows(size, peaks)
    first = first_call_rows(size["first_call"], threads, size["repeat"])
    clips = sdr_clips(audio)
    spleeter = [spleeter_analysis(size, frames, clips) for frames in size["profile_frames"]]
    by = {(r["stage"], r["dtype"]): r for r in rows}
    ratios = {
        f"bf16_vs_float32 {s}": round(
            by[s, "float32"]["ms_per_snippet"] / by[s, "bf16"]["ms_per_snippet"], 2
        )
        for s in STAGES
        if s in TORCH_STAGES
    }
    shares = {sp["frames"]: sp["profiles"]["float32"]["share_bf16_cannot_touch"] for sp in spleeter}
    notes = [
        f"peak float32 {peaks['float32']['gflops']} GFLOP/s, bf16 {peaks['bf16']['gflops']} "
        f"GFLOP/s ({'native' if native else 'EMULATED: no AVX512-BF16/AMX'}), {threads} threads",
        "FLOPs: matmuls and convolutions (FlopCounterMode) + LSTMs by formula; FFTs, batch norm "
        "and elementwise ops not counted (Spleeter's: < 1 % of its total)",
        f"Spleeter: share of float32 time bf16 cannot touch (not conv2d / conv_transpose2d), "
        f"by T: {shares}",
        *(conv_note(sp) for sp in spleeter),
    ]
    return {
        "config": {
            "threads": threads,
            "quick": quick,
            "native_bf16": native,
            "repeat": size["repeat"],
            "warmup": size["warmup"],
        },
        "peak": peaks,
        "rows": rows,
        "first_call": first,
        "spleeter": spleeter,
        "ratios": ratios,
        "notes": notes,
    }


def markdown(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of `columns` of `rows` (missing cells are empty)."""

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def spleeter_report(sp: dict[str, Any]) -> str:
    names = list(sp["profiles"])
    rows = [{"group": g, **{n: sp["profiles"][n]["ms"][g] for n in names}} for g in sps.GROUPS]
    rows.append({"group": "total", **{n: sp["profiles"][n]["total_ms"] for n in names}})
    rows.append(
        {
            "group": "share bf16 cannot touch",
            **{n: sp["profiles"][n]["share_bf16_cannot_touch"] for n in names},
        }
    )
    return "\n\n".join(
        [
            f"### Spleeter T={sp['frames']}: profile, self CPU ms by group\n"
            + markdown(rows, ["group", *names]),
            f"### Spleeter T={sp['frames']}: variants\n"
            + markdown(
                sp["variants"],
                [
                    "variant",
                    "ms",
                    "median_ms",
                    "speedup_vs_float32",
                    "vocals_sdr_vs_float32_db",
                    "min_sdr_db",
                ],
            ),
        ]
    )


def report(result: dict[str, Any]) -> str:
    peak_rows = [{"dtype": k, **v} for k, v in result["peak"].items()]
    return "\n\n".join(
        [
            f"machine: {result['machine']['cpu']}, threads {result['config']['threads']}, "
            f"load {result['machine']['load_average']} -> {result.get('load_average_end')}",
            "### peak (square matmul)\n"
            + markdown(peak_rows, ["dtype", "gflops", "n", "best_ms", "native"]),
            "### stages (one 3 s snippet)\n"
            + markdown(
                result["rows"],
                [
                    "stage",
                    "dtype",
                    "ms_per_snippet",
                    "median_ms_per_snippet",
                    "gflop_per_snippet",
                    "gflops",
                    "pct_of_peak",
                ],
            ),
            "### first call vs steady (fresh process per dtype)\n"
            + markdown(
                result["first_call"],
                [
                    "stage",
                    "dtype",
                    "build_s",
                    "first_call_s",
                    "steady_best_s",
                    "first_minus_steady_s",
                    "first_over_steady",
                    "new_batch_size_first_call_s",
                    "error",
                ],
            ),
            *(spleeter_report(sp) for sp in result["spleeter"]),
            "\n".join(f"note: {n}" for n in result["notes"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few repeats, small sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument(
        "--audio",
        type=Path,
        nargs="*",
        default=(),
        help="audio files for the Spleeter variants' SDR (default: a synthetic clip)",
    )
    parser.add_argument("--first-call", nargs=2, metavar=("KIND", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.first_call:
        print(json.dumps(first_call(*args.first_call, args.repeat)))
        return 0
    result = {"machine": machine(), **run(args.quick, args.threads, args.audio)}
    result["load_average_end"] = machine()["load_average"]
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
