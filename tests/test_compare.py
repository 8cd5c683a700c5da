"""Model comparison runs: spec validation, local vs cluster, failures, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.compare import SpecError, compare, load_spec
from pkpd.data import write_nonmem
from pkpd.models import load
from pkpd.simulate import simulate

SPEC = """
[run]
name = "tiny"
seed = 11
chains = 2
draws = 40
tune = 40

[[datasets]]
name = "sim"
path = "sim.csv"
{analytes}

[[models]]
model = "multiphasic"
iiv = ["cmax", "tmax"]
variants = {{ base = [], dose = ["cmax~dose"] }}
{extra}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare")
    write_nonmem(simulate(load("multiphasic"), ["3e8", "6e8"], n=3, seed=4), path / "sim.csv")
    return path


def write_spec(folder, name, analytes="", extra=""):
    path = folder / name
    path.write_text(SPEC.format(analytes=analytes, extra=extra))
    return path


@pytest.mark.parametrize("body, wording", [
    ("[run]\nchains = 0\n", "run.chains must be an integer >= 1"),
    ("[run]\ntarget_accept = 1.5\n", "run.target_accept must be a number between 0 and 1"),
    ("[run]\n[[models]]\nmodel = 'multiphasic'\n", "at least one [[datasets]] entry"),
    ("[[datasets]]\nname = 'd'\npath = 'nope.csv'\n[[models]]\nmodel = 'multiphasic'\n", "datasets[1].path"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'nonesuch'\n", "models[1].model: unknown model"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'multiphasic'\n"
     "variants = { x = ['zz~dose'] }\n", "models[1].variants.x: model multiphasic has no parameter 'zz'"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'multiphasic'\n"
     "priors = { cmax = [-1, 1] }\n", "models[1].priors.cmax: prior cmax: LogNormal prior needs median > 0"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\nfoo = 1\n[[models]]\nmodel = 'multiphasic'\n", "unknown key(s) foo"),
    ("[run\nname = 'x'\n", "not valid TOML"),
])
def test_malformed_specs_get_located_messages(folder, body, wording):
    path = folder / "bad.toml"
    path.write_text(body)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert wording in str(info.value) and "bad.toml" in str(info.value)
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 2 and wording.split("[")[0] in result.output


def test_seeds_derive_from_the_spec(folder):
    spec = load_spec(write_spec(folder, "seeds.toml"))
    again = load_spec(write_spec(folder, "seeds.toml"))
    assert [f.seed for f in spec.fits] == [f.seed for f in again.fits]
    assert len({f.seed for f in spec.fits}) == len(spec.fits)


def test_local_and_two_worker_cluster_give_the_same_leaderboard_and_failures_are_recorded(folder):
    # a third "model" fitted to an analyte it cannot predict fails; the others complete
    spec = write_spec(folder, "runs.toml", extra="[[models]]\nname = 'bad'\nmodel = 'multiphasic'\n"
                                                "iiv = ['cmax']\npriors = { nosuch = [1, 1] }\n")
    with pytest.raises(SpecError):
        load_spec(spec)  # an unknown prior parameter is caught before anything runs
    spec = write_spec(folder, "runs.toml")
    one = compare(spec, folder / "one", workers=1)
    two = compare(spec, folder / "two", workers=2)
    cols = ["model", "variant", "elpd_loo", "se", "weight", "pareto_k_bad"]
    pd.testing.assert_frame_equal(one.leaderboard[cols], two.leaderboard[cols])
    board = pd.read_csv(folder / "one" / "leaderboard.csv")
    assert {"model", "dataset", "elpd_loo", "se", "d_elpd", "d_se", "weight", "pareto_k_bad", "converged"} <= set(board.columns)
    assert (folder / "one" / "leaderboard.png").stat().st_size > 0
    for fit_dir in (folder / "one" / "fits").iterdir():
        assert {"posterior.nc", "diagnostics.json", "fit.log", "result.json"} <= {p.name for p in fit_dir.iterdir()}
    shown = CliRunner().invoke(app, ["compare", "show", str(folder / "one")])
    assert shown.exit_code == 0 and "Leaderboard" in shown.output


def test_a_failing_fit_is_reported_and_the_others_complete(folder):
    spec = write_spec(folder, "fail.toml", analytes='analytes = ["il6"]')
    result = compare(spec, folder / "fail", workers=1)
    assert all(r["status"] == "failed" for r in result.fits.values())
    assert all("il6" in r["reason"] for r in result.fits.values())
    manifest = json.loads((folder / "fail" / "manifest.json").read_text())["fits"]
    assert all(entry["status"] == "failed" for entry in manifest.values())


def test_killed_run_resumes_and_runs_every_fit_exactly_once(folder):
    spec = write_spec(folder, "kill.toml")
    out = folder / "killed"
    command = [sys.executable, "-m", "pkpd", "compare", str(spec), "-o", str(out), "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("fits/*/result.json")):
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("fits/*/result.json")}
    assert len(finished) == 1  # killed after the first fit, before the second
    for path in out.rglob("*"):
        if path.is_file() and path.suffix == ".json":
            json.loads(path.read_text())  # no corrupt file
    result = CliRunner().invoke(app, ["compare", str(spec), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("fits/*/result.json")}
    assert len(after) == 2
    for name, mtime in finished.items():
        assert after[name] == mtime  # the finished fit was not run again
    manifest = json.loads((out / "manifest.json").read_text())["fits"]
    assert all(entry["status"] == "ok" for entry in manifest.values())
    assert sorted(entry["attempts"] for entry in manifest.values()) == [1, 2]
