"""Run bench/latency.py on two source trees, interleaved, and compare the figures per round.

Each tree runs *its own* ``bench/latency.py`` from its own root with ``PYTHONPATH=<tree>``, so
the driver, the load worker, the gateway emulator and the service subprocess (started through
that tree's ``bench/_common.py``, which sets ``PYTHONPATH`` to its own tree and puts the tree
first on ``sys.path``) all import that tree's ``realtime`` and ``gateway_client`` rather than
the editable install. Before the first round each tree is checked: ``realtime`` must import
from inside the tree.

    python bench/compare.py --baseline /work/baseline                 # 2 rounds of --quick
    python bench/compare.py --baseline /work/baseline --rounds 3 --full
    python bench/compare.py --baseline /work/baseline --only seq,floor -- --no-uvloop

Rounds go baseline, current, baseline, current, ... (``--abba`` alternates the order per
round instead). Every run's full output is kept in ``--out`` (default /tmp/bench-compare).
The table printed at the end gives, per figure, the median over rounds of each tree's
service p50 and p99 and of its service/direct p50 ratio (the direct column is measured in
the same run, so that ratio carries less of the machine's noise), and current / baseline.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CURRENT = HERE.parents[1]
ROW = re.compile(r"^\| (\([a-e]\)[^|]*?) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|")


def number(cell: str) -> float:
    match = re.match(r"\s*([-+0-9.naif]+)", cell)
    return float(match.group(1)) if match else float("nan")


def check_tree(tree: Path) -> str:
    """Where `realtime` is imported from when run as the bench runs it; must be in `tree`."""
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import realtime; print(realtime.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tree)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree):
        raise SystemExit(f"{tree}: realtime imports from {out}, not from the tree")
    return out


def run_once(tree: Path, args: list[str], log: Path) -> dict[str, tuple[float, ...]]:
    """Run the tree's bench/latency.py; return {figure: (svc p50, svc p99, dir p50, dir p99)}."""
    command = [sys.executable, str(tree / "bench" / "latency.py"), *args]
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            command,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    took = time.monotonic() - started
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-30:])
        raise SystemExit(f"{tree}: {' '.join(command)} exited {proc.returncode}:\n{tail}")
    rows: dict[str, tuple[float, ...]] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1).strip()] = tuple(number(c) for c in match.groups()[1:5])
    print(f"  {tree}: {len(rows)} figures in {took:.0f} s -> {log}", flush=True)
    return rows


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other source tree")
    parser.add_argument("--current", type=Path, default=CURRENT, help="default: this tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="full runs instead of --quick")
    parser.add_argument("--only", help="passed to bench/latency.py --only")
    parser.add_argument("--abba", action="store_true", help="alternate the order per round")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-compare"))
    parser.add_argument("extra", nargs="*", help="after --: more bench/latency.py arguments")
    opts = parser.parse_args()
    trees = {"baseline": opts.baseline.resolve(), "current": opts.current.resolve()}
    args = ([] if opts.full else ["--quick"]) + (["--only", opts.only] if opts.only else [])
    args += opts.extra
    opts.out.mkdir(parents=True, exist_ok=True)
    for name, tree in trees.items():
        print(f"{name}: {tree} (realtime from {check_tree(tree)})", flush=True)
    print(f"bench arguments: {' '.join(args) or '(none)'}", flush=True)

    results: dict[str, list[dict[str, tuple[float, ...]]]] = {name: [] for name in trees}
    for r in range(opts.rounds):
        order = list(trees)
        if opts.abba and r % 2:
            order.reverse()
        print(f"round {r + 1}/{opts.rounds}", flush=True)
        for name in order:
            log = opts.out / f"round{r + 1}-{name}.txt"
            results[name].append(run_once(trees[name], args, log))

    figures = [f for f in results["current"][0] if all(f in run for run in results["baseline"])]
    header = (
        "| figure | baseline svc p50 | current svc p50 | cur/base p50 "
        "| baseline svc p99 | current svc p99 | cur/base p99 "
        "| svc/direct p50, baseline | svc/direct p50, current |"
    )
    lines = [header, "| " + " | ".join(["---"] * 9) + " |"]
    for fig in figures:
        med: dict[str, list[float]] = {}
        for name in trees:
            runs = [run[fig] for run in results[name] if fig in run]
            med[name] = [
                median([x[0] for x in runs]),
                median([x[1] for x in runs]),
                median([x[0] / x[2] if x[2] > 0 else float("nan") for x in runs]),
            ]
        b, c = med["baseline"], med["current"]
        lines.append(
            f"| {fig} | {b[0]:.2f} | {c[0]:.2f} | {c[0] / b[0]:.2f} "
            f"| {b[1]:.2f} | {c[1]:.2f} | {c[1] / b[1]:.2f} | {b[2]:.2f} | {c[2]:.2f} |"
        )
    print(f"\nmedians over {opts.rounds} rounds per tree (times in ms, RSS row in KiB)\n")
    print("\n".join(lines))
    print("\nper round, service p50 / p99 (baseline | current):")
    for fig in figures:
        cells = []
        for name in trees:
            cells.append(", ".join(f"{run[fig][0]:.2f}/{run[fig][1]:.2f}" for run in results[name]))
        print(f"  {fig}: {cells[0]} | {cells[1]}")


if __name__ == "__main__":
    main()
