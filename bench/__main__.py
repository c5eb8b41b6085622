"""``python -m bench [--quick] [--json] [--only CASE ...]``: run cases, print ratios and figures.

Each case module has ``run(quick: bool) -> dict`` returning ``config``, ``rows`` (absolute
figures), ``ratios`` (speed-up = baseline time / candidate time) and ``notes``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

from bench.timing import machine

CASES: dict[str, str | None] = {
    "ensemble": "bench.ensemble",
    "separation": "bench.separation",
    "database": "bench.database",
    "rescoring": "bench.rescoring",
    "end_to_end": "bench.end_to_end",
    "celery": "bench.celery_mode",
    "memory": "bench.memory",
    "results_memory": "bench.results_memory",
    "drain": "bench.drain",
    "loading": "bench.loading",
    "training": "bench.training",
    "spleeter_frames": "bench.spleeter_frames",
    "member_forward": "bench.member_forward",
    "stages": "bench.stages",
}


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_format_value(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  " + "  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def _print_case(name: str, result: dict[str, Any]) -> None:
    print(f"\n== {name} ({result.get('elapsed_s', 0):.0f} s)")
    if "status" in result:
        print(f"  {result['status']}")
        return
    print("  config: " + ", ".join(f"{k}={v}" for k, v in result.get("config", {}).items()))
    _print_table(result.get("rows", []))
    for k, v in result.get("ratios", {}).items():
        print(f"  ratio {k}: {v}x")
    for note in result.get("notes", []):
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    parser.add_argument("--only", nargs="+", choices=list(CASES), metavar="CASE",
                        help=f"run only these cases ({', '.join(CASES)})")  # fmt: skip
    args = parser.parse_args(argv)
    selected = args.only or list(CASES)
    report: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    if not args.json:
        m = report["machine"]
        print(
            f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads), cuda {m['cuda']}, load {m['load_average']}"
        )
    import torch

    threads = torch.get_num_threads()
    for name in selected:
        module = CASES[name]
        start = time.perf_counter()
        torch.set_num_threads(threads)  # a case that changed it must not change the next one's
        if module is None:
            result: dict[str, Any] = {"status": "not implemented yet"}
        else:
            result = importlib.import_module(module).run(args.quick)
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        report[name] = result
        if not args.json:
            _print_case(name, result)
    report["load_average_end"] = machine()["load_average"]
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(f"\nload average at the end: {report['load_average_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
