"""Wall time of `pkpd dose RUN` with its defaults, and where it goes.

    python benchmarks/dose_time.py [RUN] [--repeats 3]

RUN: a fit's run folder (default demo-out/fit, written by `./run demo`). Each repeat runs the
command in a fresh process (what a user waits for), then the same steps in another fresh process
with timers: starting (import pkpd.cli), loading the run, dose selection (and the compiled
solver's share of it), writing the tables and figures. The machine is shared: compare versions
by running this for each alternately. Last line (medians over the repeats):
    dose_time: wall_s=W import_s=I load_s=L select_s=S solver_s=K write_s=F
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
import pkpd.cli  # noqa: F401  (what every command imports)
from pkpd.cli.common import load_fit_or_average
from pkpd.dose import select_dose, write_dose
import pkpd.dose.selection as selection
t1 = time.perf_counter()
solver = [0.0]
predictions = selection.predictions
def timed(*args):
    t = time.perf_counter()
    out = predictions(*args)
    solver[0] += time.perf_counter() - t
    return out
selection.predictions = timed
result = load_fit_or_average(Path(sys.argv[1]), None, False, None, False)
t2 = time.perf_counter()
chosen = select_dose(result)
t3 = time.perf_counter()
write_dose(chosen, sys.argv[2], result.cohort)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "select_s": t3 - t2, "solver_s": solver[0],
                  "write_s": t4 - t3}))
"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="demo-out/fit", help="a fit's run folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (Path(args.run) / "posterior.nc").is_file():
        sys.exit(f"dose_time: {args.run} is not a fit's run folder (no posterior.nc); run `./run demo` first or "
                 "give the folder of `pkpd fit ... -o RUN`")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        # once untimed: a new pkpd version compiles its kernels on its first run
        subprocess.run([sys.executable, "-m", "pkpd", "dose", args.run, "-o", out], check=True, capture_output=True)
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pkpd", "dose", args.run, "-o", out], check=True, capture_output=True)
            wall = time.perf_counter() - t
            phases = subprocess.run([sys.executable, "-c", PHASES, args.run, out], check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1]
            rows.append({"wall_s": wall, **json.loads(phases)})
    keys = ["wall_s", "import_s", "load_s", "select_s", "solver_s", "write_s"]
    print(f"{'repeat':>6s} " + " ".join(f"{k:>9s}" for k in keys))
    for i, row in enumerate(rows, 1):
        print(f"{i:6d} " + " ".join(f"{row[k]:9.2f}" for k in keys))
    median = {k: statistics.median(r[k] for r in rows) for k in keys}
    print("dose_time: " + " ".join(f"{k}={median[k]:.2f}" for k in keys))


if __name__ == "__main__":
    main(sys.argv[1:])
