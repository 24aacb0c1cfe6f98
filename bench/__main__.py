"""`python -m bench` (or `make bench`): run every benchmark under bench/ and print one report table.

Each ``bench/bench_<name>.py`` is run as its own process (``python -m bench.bench_<name>``) and writes
``bench/results/<name>.json``: a list of rows ``{metric, ours, peer, peer_name, ratio, target, unit}``
measured in the same run. This runner collects them into ``bench/results/REPORT.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


GPU_ONLY = {"training_gpu"}  # measured on a CUDA device; run by default only where nvidia-smi is found


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def default_names() -> list[str]:
    """Every benchmark, less the GPU-only ones on a machine without an NVIDIA GPU (name them to run them anyway)."""
    gpu = shutil.which("nvidia-smi") is not None
    return [n for n in discover() if gpu or n not in GPU_ONLY]


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return "-" if v is None else str(v)


def report(names: list[str]) -> str:
    lines = ["| bench | metric | ours | peer | peer figure | ratio | target |", "|---|---|---|---|---|---|---|"]
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | (no result: the benchmark failed, see its output) | | | | | |")
            continue
        for row in json.loads(path.read_text()):
            lines.append(
                f"| {name} | {row.get('metric')} ({row.get('unit', '')}) | {_fmt(row.get('ours'))} | "
                f"{row.get('peer_name') or '-'} | {_fmt(row.get('peer'))} | {_fmt(row.get('ratio'))} | {row.get('target') or '-'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(discover())}; "
                        f"{', '.join(sorted(GPU_ONLY))} only where nvidia-smi is found)")
    parser.add_argument("--report-only", action="store_true", help="do not run, only print the table of the last results")
    args = parser.parse_args(argv)
    names = args.names or default_names()
    RESULTS.mkdir(exist_ok=True)
    failed = []
    if not args.report_only:
        for name in names:
            (RESULTS / f"{name}.json").unlink(missing_ok=True)
            print(f"== bench {name} ==", flush=True)
            t0 = time.monotonic()
            rc = subprocess.call([sys.executable, "-m", f"bench.bench_{name}"], cwd=HERE.parent)
            print(f"== bench {name}: exit {rc} in {time.monotonic() - t0:.0f}s ==", flush=True)
            if rc != 0:
                failed.append(name)
    table = report(names)
    (RESULTS / "REPORT.md").write_text(table + "\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
