"""A fit's draws follow from its seed alone, whatever the state of the compile caches.

Code compiled in the sampling process and the same code loaded from the cache differ in the
last bits of the gradient (see pkpd.fit.compile), which NUTS amplifies: before fits compiled in a
separate process, the first fit of a model with empty caches drew differently from every rerun
with the same seed (measured: multiphasic, 8 subjects, seed 11: chain sums of mu 429.72 against
421.98 in the first chain). Each fit here runs in its own process, as a user's would.
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pkpd.fit.compile import FROM_CACHE, FROM_CHILD
from pkpd.fit.engine import population_build
from pkpd.fit.population import PopulationSpec
from pkpd.fit.precompile import compile_elsewhere, start
from pkpd.models import Model, load
from pkpd.simulate import simulate

FIT = """
import json
from pkpd.fit import fit
from pkpd.models import load
from pkpd.simulate import simulate
model = load("multiphasic")
cohort = simulate(model, ["1e6/kg"], n=8, seed=3, analytes=["transgene"])
result = fit(model, cohort, chains=4, draws=50, tune=100, seed=11, progress=False, cores=2)
mu = result.tree.posterior["mu"].values
print(json.dumps({"compiled": result.tree.attrs["compiled"], "mu": mu.ravel().tolist()}))
"""


def _fit_in_a_new_process(environment: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", FIT], env=environment, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_first_fit_with_empty_caches_draws_what_every_rerun_draws(tmp_path):
    flags = [f for f in os.environ.get("PYTENSOR_FLAGS", "").split(",") if f and "compiledir" not in f]
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    environment = {**os.environ, "PYTENSOR_FLAGS": ",".join(flags + [f"base_compiledir={tmp_path / 'pytensor'}"]),
                   "TMPDIR": str(temporary)}
    first = _fit_in_a_new_process(environment)   # the sampler's log density compiles afresh
    second = _fit_in_a_new_process(environment)  # and is loaded from the cache
    assert first["compiled"] == FROM_CHILD
    assert second["compiled"] == FROM_CACHE
    assert first["mu"] == second["mu"]  # bit for bit
    # neither the compile process's folder nor pytensor's generated source is left behind
    assert not list(temporary.iterdir())


def test_a_model_built_in_python_cannot_be_compiled_elsewhere():
    built = load("multiphasic")
    in_python = Model.compose(built.modules)  # no source files recorded
    cohort = simulate(built, ["1e6/kg"], n=2, seed=3, analytes=["transgene"])
    assert population_build(PopulationSpec.default(in_python), cohort, None) is None
    function, arguments = population_build(PopulationSpec.default(built), cohort, None)
    assert function(*arguments) is not None  # the model rebuilt from its records


def test_a_failed_compile_process_is_a_warning_naming_its_error():
    with pytest.warns(UserWarning, match="ZeroDivisionError"):
        assert compile_elsewhere(operator.truediv, (1, 0)) is False
    with pytest.warns(UserWarning, match="could not be handed"):
        assert compile_elsewhere(lambda: None, ()) is False


def test_a_compile_process_started_beside_a_fit_is_stopped_when_not_needed():
    """A fit starts its sampler's compile process at its beginning and stops it when the cache
    turns out to hold the compiled model already: the process ends and leaves no files."""
    started = start(operator.add, (1, 2))
    started.cancel()
    assert started._process.poll() is not None and not Path(started._folder).exists()
    assert not started.compiled()


KILLED_FIT = """
import time
from pkpd.fit.precompile import start
started = start(time.sleep, (120,))  # stands in for a compile that takes two minutes
print(started._process.pid, started._folder, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie waiting to be reaped has stopped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_killed_fit_leaves_no_compile_process_or_files():
    """A fit killed (SIGKILL, no clean-up of its own) while its compile process runs: the
    compile process notices that its parent is gone, removes its folder and exits."""
    fit = subprocess.Popen([sys.executable, "-c", KILLED_FIT], stdout=subprocess.PIPE, text=True)
    child, folder = fit.stdout.readline().split()
    child = int(child)
    time.sleep(3)  # the compile process is running its payload
    assert _running(child) and Path(folder).exists()
    fit.kill()
    fit.wait()
    deadline = time.monotonic() + 20
    while (_running(child) or Path(folder).exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(child), "the compile process outlived the fit that started it"
    assert not Path(folder).exists(), f"the compile process left {folder}"
