"""Compilation time of a small user model: the first fit on a fresh machine, and a refit to new data.

    python benchmarks/compile_time.py

A user's one-compartment model file (tests/models/oral_1cpt.py: depot and central, lag,
bioavailability, combined error) fitted to 10 simulated subjects (2 chains x (200 + 200)), each
fit in a fresh process:
  1. first fit with empty caches (pkpd's generated kernels and pytensor's numba cache in new
     folders): everything compiles, as on a fresh machine;
  2. the same model on new data (another seed) with the caches of run 1: what a user who
     reruns an unchanged model waits for;
  3. the model edited (elimination made saturable: a new right-hand side) with the caches of
     runs 1-2: what a user who edits a model waits for (its solver kernel and log density
     compile; pytensor's own operations and pkpd's model-independent pieces are cached).
Printed: compile seconds (`fit`'s `compile_seconds`: the sampler's log density, in a separate
process) and sampling seconds of each, and the whole fit's wall time (which also holds the
solver kernel's compile, on the individual fits' first call). The last line is machine-readable:
    compile_time: first_s=F rerun_s=R edited_s=E edited_wall_s=W
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "tests" / "models" / "oral_1cpt.py"

FIT = """
import json, sys, time
from pkpd.fit import fit
from pkpd.models import load
from pkpd.simulate import simulate
model = load(sys.argv[1])
cohort = simulate(model, ["100 mg", "200 mg x2 q12h"], n=5, seed=int(sys.argv[2]), product=None,
                  times=[0.5, 1, 2, 3, 4, 6, 8, 12, 24, 36, 48])
t0 = time.perf_counter()
result = fit(model, cohort, chains=2, draws=200, tune=200, seed=1, progress=False)
attrs = result.tree.attrs
print(json.dumps({"compile_s": attrs["compile_seconds"], "sample_s": attrs["sampling_seconds"],
                  "fit_s": time.perf_counter() - t0}))
"""


#: the user's edit of run 3: linear elimination made saturable
EDIT = ("p.cl / p.v * s.central}", "p.cl / p.v * s.central / (1 + s.central / 400)}")


def run(seed: int, environment: dict, model: Path = MODEL) -> dict:
    out = subprocess.run([sys.executable, "-c", FIT, str(model), str(seed)], env=environment, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


#: the figures of the last `main()` run (for benchmarks/fit_speed.py's last line)
LAST: dict = {}


def main() -> None:
    with tempfile.TemporaryDirectory() as caches:
        environment = {**os.environ, "PKPD_CACHE": str(Path(caches) / "pkpd"),
                       "PYTENSOR_FLAGS": f"base_compiledir={Path(caches) / 'pytensor'}"}
        first = run(4, environment)
        rerun = run(5, environment)
        text = MODEL.read_text()
        assert EDIT[0] in text, "the benchmark's edit no longer matches the model file"
        edited_model = Path(caches) / "oral_1cpt_saturable.py"
        edited_model.write_text(text.replace(*EDIT))
        edited = run(6, environment, edited_model)
    print(f"{'':24s} {'compile s':>10s} {'sampling s':>11s} {'fit wall s':>11s}")
    for label, r in (("first fit (no caches)", first), ("refit to new data", rerun), ("edited model", edited)):
        print(f"{label:24s} {r['compile_s']:10.1f} {r['sample_s']:11.1f} {r['fit_s']:11.1f}")
    LAST.update(first_s=first["compile_s"], rerun_s=rerun["compile_s"], edited_s=edited["compile_s"],
                edited_wall_s=edited["fit_s"])
    print(f"compile_time: first_s={first['compile_s']:.1f} rerun_s={rerun['compile_s']:.1f} "
          f"edited_s={edited['compile_s']:.1f} edited_wall_s={edited['fit_s']:.1f}")


if __name__ == "__main__":
    main()
