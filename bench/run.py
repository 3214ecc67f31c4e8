# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make bench`: every scenario, side by side with the peers, in one run; see bench/README.md.

    .venv/bin/python bench/run.py [--scenarios 1,2,3,4,5,6] [--repeat 3] [--quick] [--work DIR] [--out bench/results]

Each scenario module has ``SCENARIOS = {"N": function(bench)}``; a function records its figures with
``bench.record``. The report (JSON, markdown table, PNG chart) is written by bench/report.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
import harness  # noqa: E402
import report  # noqa: E402
import scenario_ansible  # noqa: E402
import scenario_memory  # noqa: E402
import scenario_pull  # noqa: E402
import scenario_push  # noqa: E402

SCENARIOS = {**scenario_pull.SCENARIOS, **scenario_memory.SCENARIOS, **scenario_push.SCENARIOS, **scenario_ansible.SCENARIOS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--scenarios", default=",".join(sorted(SCENARIOS)))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small images: a smoke run of the harness, not figures")
    parser.add_argument("--work", help="scratch directory (default: a new one under /var/tmp, removed afterwards)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(sorted(SCENARIOS))}")
    work = args.work or tempfile.mkdtemp(prefix="ecrkit-bench-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    started = time.time()
    try:
        with harness.Bench(work, repeat=args.repeat, quick=args.quick) as bench:
            for name in chosen:
                SCENARIOS[name](bench)
            results = bench.results
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    command = "make bench" + (f" BENCH_ARGS='{' '.join(argv or sys.argv[1:])}'" if (argv or sys.argv[1:]) else "")
    report.write(args.out, results, harness.machine(), command=command, repeat=args.repeat, quick=args.quick,
                 seconds=time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
