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
from pkpd.compare import SpecError, compare, leaderboard, load_spec
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
max_refits = {max_refits}
loo_samples = 100

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


def write_spec(folder, name, analytes="", extra="", max_refits=0):
    path = folder / name
    path.write_text(SPEC.format(analytes=analytes, extra=extra, max_refits=max_refits))
    return path


@pytest.mark.parametrize("body, wording", [
    ("[run]\nchains = 0\n", "run.chains must be an integer from 1 to 64"),
    ("[run]\ndraws = 1000000000\n", "run.draws must be an integer from 10 to 100000"),
    ("[run]\ntarget_accept = 1.5\n", "run.target_accept must be a number between 0 and 1"),
    ("[run]\n[[models]]\nmodel = 'multiphasic'\n", "at least one [[datasets]] entry"),
    ("[[datasets]]\nname = 'd'\npath = 'nope.csv'\n[[models]]\nmodel = 'multiphasic'\n", "datasets[1].path"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'nonesuch'\n", "models[1].model: unknown model"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'multiphasic'\n"
     "variants = { x = ['zz~dose'] }\n", "models[1].variants.x: model multiphasic has no parameter 'zz'"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'multiphasic'\n"
     "priors = { cmax = [-1, 1] }\n", "models[1].priors.cmax: prior cmax: LogNormal prior needs a finite median > 0"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\nfoo = 1\n[[models]]\nmodel = 'multiphasic'\n", "unknown key(s) foo"),
    ("[run\nname = 'x'\n", "not valid TOML"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'multiphasic'\nfixed_effects = ['zz']\n",
     "models[1].fixed_effects: model multiphasic has no parameter 'zz'"),
    ("[[datasets]]\nname = 'd'\npath = 'sim.csv'\n[[models]]\nmodel = 'multiphasic'\niiv = ['cmax']\n"
     "fixed_effects = ['cmax']\n", "cmax listed in both iiv and fixed_effects"),
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


def test_unconverged_fits_get_no_weight_and_average_only_when_asked(folder):
    # the tiny fits (40 draws) fail their diagnostics: ranked and flagged, but no stacking weight
    run = folder / "one"
    if not (run / "leaderboard.csv").exists():
        compare(write_spec(folder, "runs.toml"), run, workers=1)
    table = pd.read_csv(run / "leaderboard.csv")
    assert not table["converged"].any() and table["rank"].notna().all() and table["weight"].isna().all()
    assert table["reason"].str.contains("left out of the stacking weights").all()
    weighed = leaderboard(run, weigh_unconverged=True)
    assert weighed["weight"].sum() == pytest.approx(1.0)
    refused = CliRunner().invoke(app, ["ppc", str(run), "--average", "-o", str(folder / "avg-ppc")])
    assert refused.exit_code == 2 and "none converged" in refused.output and "--weigh-unconverged" in refused.output
    plain = CliRunner().invoke(app, ["ppc", str(run), "-o", str(folder / "avg-ppc")])
    assert plain.exit_code == 2 and "add --average" in plain.output
    done = CliRunner().invoke(app, ["dose", str(run), "--average", "--weigh-unconverged", "--doses", "3e8",
                                    "--target", "peak:transgene:cmax>=1000:efficacy",
                                    "--draws", "10", "--patients", "5", "-o", str(folder / "avg-dose")])
    assert done.exit_code == 0, done.output
    record = json.loads((folder / "avg-dose" / "recommendation.json").read_text())
    members = record["settings"].get("model_average", {"members": [{"weight": 1.0}]})["members"]
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)


def test_an_analyte_missing_from_the_data_stops_the_spec_before_any_fit(folder):
    with pytest.raises(SpecError, match=r"datasets\[1\].analytes: il6 not in the file"):
        load_spec(write_spec(folder, "fail.toml", analytes='analytes = ["il6"]'))


def test_failing_fits_are_reported_and_the_command_exits_1(folder, tmp_path):
    data = tmp_path / "sim.csv"
    data.write_bytes((folder / "sim.csv").read_bytes())
    spec_path = tmp_path / "fail.toml"
    spec_path.write_text(SPEC.format(analytes="", extra="", max_refits=0))
    spec = load_spec(spec_path)
    data.write_bytes(data.read_bytes() + b"\n")  # the data change after the spec was checked
    result = compare(spec, tmp_path / "fail", workers=1)
    assert all(r["status"] == "failed" for r in result.fits.values())
    assert all("changed after the spec was loaded" in r["reason"] for r in result.fits.values())
    manifest = json.loads((tmp_path / "fail" / "manifest.json").read_text())["fits"]
    assert all(entry["status"] == "failed" for entry in manifest.values())
    assert set(result.leaderboard["status"]) == {"failed"}


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


def test_the_run_folder_keeps_its_contract(folder, tmp_path):
    """Re-runs redo exactly what changed or broke, drop what the spec dropped, hold a lock and
    clean only their own temporary files."""
    import socket

    from pkpd.compare import leaderboard
    from pkpd.compare.run import RunFolderError

    spec = write_spec(folder, "contract.toml")
    out = tmp_path / "run"
    compare(spec, out, workers=1)
    results = {p.parent.name: p for p in out.glob("fits/*/result.json")}
    stamp = {name: p.stat().st_mtime_ns for name, p in results.items()}
    assert len(stamp) == 2

    # a damaged result.json: the leaderboard says so instead of crashing; a re-run redoes that fit only
    damaged = results["sim__multiphasic__dose"]
    damaged.write_text('{"status": "ok", "trunc')
    board = leaderboard(out)
    row = board[board["variant"] == "dose"].iloc[0]
    assert row["status"] == "failed" and "result.json is damaged" in row["reason"]
    (out / "fits" / ".notes.tmp").write_text("mine, not pkpd's")
    (out / "fits" / ".result.json.pkpd-dead.tmp").write_text("left by a killed run")
    compare(spec, out, workers=1)
    assert results["sim__multiphasic__base"].stat().st_mtime_ns == stamp["sim__multiphasic__base"]
    assert damaged.stat().st_mtime_ns != stamp["sim__multiphasic__dose"]
    assert (out / "fits" / ".notes.tmp").exists() and not (out / "fits" / ".result.json.pkpd-dead.tmp").exists()

    # the spec drops a variant: no refit, the leaderboard forgets it, the manifest lists it as removed
    smaller = folder / "contract_base.toml"
    smaller.write_text(spec.read_text().replace(', dose = ["cmax~dose"]', ""))
    again = compare(smaller, out, workers=1)
    assert list(again.leaderboard["variant"]) == ["base"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["removed"] == ["sim/multiphasic/dose"] and list(manifest["fits"]) == ["sim/multiphasic/base"]
    assert results["sim__multiphasic__base"].stat().st_mtime_ns == stamp["sim__multiphasic__base"]

    # a changed setting changes the fit's digest: it is refitted
    longer = folder / "contract_longer.toml"
    longer.write_text(smaller.read_text().replace("draws = 40", "draws = 50"))
    compare(longer, out, workers=1)
    assert results["sim__multiphasic__base"].stat().st_mtime_ns != stamp["sim__multiphasic__base"]
    assert json.loads(results["sim__multiphasic__base"].read_text())["digest"] == load_spec(longer).fits[0].digest

    # a live run holds the folder; a dead one's lock is taken over
    (out / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(RunFolderError, match="another comparison run"):
        compare(longer, out, workers=1)
    refused = CliRunner().invoke(app, ["compare", str(longer), "-o", str(out)])
    assert refused.exit_code == 2 and "another comparison run" in refused.output
    (out / ".lock").write_text(f"{socket.gethostname()} 999999999")
    compare(longer, out, workers=1)
    assert not (out / ".lock").exists()


@pytest.mark.slow  # about 100 s of refits; run with -m slow (passed in the full run of 2026-11-29)
def test_a_subject_whose_k_stays_high_is_refitted_exactly_once(folder, tmp_path, monkeypatch):
    """The refit path on the same dask client: forced for one subject (short test fits rarely
    leave a subject above 0.7 after integration), resumable, and named in the leaderboard."""
    import importlib

    runs = importlib.import_module("pkpd.compare.run")  # the module (pkpd.compare.run is also the function)

    spec = write_spec(folder, "refit.toml", max_refits=1)
    out = tmp_path / "refit"
    real = runs.unreliable_subjects
    monkeypatch.setattr(runs, "PARETO_K_BAD", -1.0)  # every subject counts as unreliable: the worst one is refitted
    first = compare(spec, out, workers=1)
    monkeypatch.setattr(runs, "PARETO_K_BAD", 0.7)
    refits = sorted(out.glob("fits/*/refits/*.json"))
    assert len(refits) == 2  # one per fit (max_refits = 1)
    record = json.loads(refits[0].read_text())
    assert record["status"] == "ok" and record["digest"] and pd.notna(record["elpd"])
    table = pd.read_csv(refits[0].parent.parent / "loo_subjects.csv", dtype={"subject": str})
    estimate = float(table.loc[table["subject"] == record["subject"], "elpd_i"].iloc[0])
    assert abs(record["elpd"] - estimate) < 20.0  # the refit replaces an estimate PSIS flagged as unreliable
    assert all("1 exact refit(s)" in m for m in first.leaderboard["loo_method"])
    stamp = [p.stat().st_mtime_ns for p in refits]
    monkeypatch.setattr(runs, "PARETO_K_BAD", -1.0)
    compare(spec, out, workers=1)  # resumed: nothing refitted again
    assert [p.stat().st_mtime_ns for p in refits] == stamp
    assert real is runs.unreliable_subjects
