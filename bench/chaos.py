"""Chaos, longer: the scenario of tests/realtime/test_chaos.py with more lifecycles.

Hundreds or thousands of randomized, misbehaving client lifecycles against one server (drops
without Termination, audio clients that vanish, peers that stop reading, speech-to-text
failures, viewers racing a session's end, concurrent creators of one session id, deep and
huge config updates, barge-ins and cancels), then `server.stop()` with clients still
connected. Prints what was left behind (nothing, when the service is right), the file
descriptors, and the control session's delta gaps alone and under chaos: a summary for
docs/benchmarks.md. Exits 1 when the run found a problem.

    python bench/chaos.py                              # the CI size: 300 lifecycles
    python bench/chaos.py --lifecycles 3000 --seed 7   # the long mode
    python bench/chaos.py --lifecycles 300 --profile chaos.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the scenario lives in tests/support/

from support.chaos import ChaosConfig, run_chaos  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    defaults = ChaosConfig()
    p = argparse.ArgumentParser(
        prog="python bench/chaos.py",
        description="Randomized client lifecycles against one server; "
        "checks that everything is released.",
    )
    p.add_argument("--lifecycles", type=int, default=defaults.lifecycles)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="lifecycles at a time"
    )
    p.add_argument(
        "--write-timeout",
        type=float,
        default=defaults.write_timeout_s,
        help="the server's write_timeout_s (s)",
    )
    p.add_argument("--profile", metavar="OUT", help="write cProfile stats of the whole run here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The service logs every connection it aborts; a chaos run makes hundreds on purpose.
    logging.basicConfig(level=logging.ERROR)
    config = replace(
        ChaosConfig(),
        lifecycles=args.lifecycles,
        seed=args.seed,
        concurrency=args.concurrency,
        write_timeout_s=args.write_timeout,
    )
    say = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    print(
        "config: " + ", ".join(f"{f.name}={getattr(config, f.name)}" for f in fields(config)),
        flush=True,
    )
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    report = asyncio.run(run_chaos(config, progress=say))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print(report.summary())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
