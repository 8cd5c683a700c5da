"""End to end on a short fit: pkpd ppc, pkpd dose, pkpd report, and the report in Chromium."""

import json
import re
import shutil
import subprocess
import tempfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.data import write_nonmem
from pkpd.models import load
from pkpd.report import SECTIONS
from pkpd.simulate import simulate

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A short multiphasic fit (structure, not convergence) with a lymphodepletion effect."""
    root = tmp_path_factory.mktemp("report")
    model = load("multiphasic")
    with_ld = simulate(model, ["3e8", "6e8"], n=4, seed=11)
    write_nonmem(with_ld, root / "data.csv")
    invoke("fit", "multiphasic", root / "data.csv", "-o", root / "run", "--chains", "2", "--draws", "60",
           "--tune", "60", "--seed", "2", "--no-progress")
    return root / "run"


def test_ppc_writes_every_figure_and_table(run_folder, tmp_path):
    invoke("ppc", run_folder, "-o", tmp_path / "ppc", "--replicates", "40", "--draws", "20")
    names = {p.name for p in (tmp_path / "ppc").iterdir()}
    assert {"individual_transgene.png", "gof_transgene.png", "vpc_transgene.png", "pcvpc_transgene.png",
            "vpc.csv", "records.csv"} <= names
    records = pd.read_csv(tmp_path / "ppc" / "records.csv")
    assert {"pred", "ipred", "ipred_lo", "ipred_hi", "pit", "npd", "censored"} <= set(records.columns)
    assert ((records["pit"] > 0) & (records["pit"] < 1)).all()
    assert (records["ipred_lo"] <= records["ipred_hi"]).all()


def test_dose_writes_pta_and_recommendation(run_folder, tmp_path):
    result = invoke("dose", run_folder, "-o", tmp_path / "dose", "--doses", "1e8,3e8", "--doses", "6e8",
                    "--target", "peak:transgene:cmax>=5000:efficacy", "--target",
                    "exposure:transgene:auc_0_28d<1e7:safety", "--draws", "20", "--patients", "5")
    pta = pd.read_csv(tmp_path / "dose" / "pta.csv")
    assert list(pta.columns[:6]) == ["dose", "scenario", "target", "probability", "lower", "upper"]
    assert len(pta) == 3 * 2  # three doses, two targets, one scenario (multiphasic has no covariates)
    assert (pta["lower"] <= pta["probability"]).all() and (pta["probability"] <= pta["upper"]).all()
    rec = json.loads((tmp_path / "dose" / "recommendation.json").read_text())
    assert {"efficacy_level", "safety_level", "scenarios", "recommended", "settings"} <= set(rec)
    assert "Lowest total dose" in result.output


def test_dose_and_report_refuse_bad_input(run_folder, tmp_path):
    bad = runner.invoke(app, ["dose", str(run_folder), "-o", str(tmp_path / "d"), "--doses", "many"])
    assert bad.exit_code == 2 and "regimen 'many'" in bad.output
    assert not (tmp_path / "d").exists()
    missing = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert missing.exit_code == 2 and "no posterior.nc" in " ".join(missing.output.split())


def test_trial_simulate_writes_its_folder_and_names_a_missing_signal(run_folder, tmp_path):
    result = invoke("trial", "simulate", run_folder, "-o", tmp_path / "trial", "--doses", "1e8,3e8,6e8",
                    "--signal", "transgene:cmax", "--reference", "2e4", "--trials", "40", "--draws", "20",
                    "--tox-prior", "slope=Normal(0.5,0.25)", "--tox-prior", "grade4=Normal(-7,1)")
    said = " ".join(result.output.split())
    assert "P(selected)" in said and "at their priors" in said
    assert "slope ~ Normal(0.5, 0.25)" in said and "grade >= 4) ~ Normal(-7, 1)" in said
    wrong = runner.invoke(app, ["trial", "simulate", str(run_folder), "-o", str(tmp_path / "t4"), "--signal",
                                "transgene:cmax", "--tox-prior", "grade2=Normal(3,1)"])
    assert wrong.exit_code == 2 and "decreasing means" in " ".join(wrong.output.split())
    assert {"oc.csv", "summary.csv", "trial.json", "trial.png"} <= {p.name for p in (tmp_path / "trial").iterdir()}
    bad = runner.invoke(app, ["trial", "simulate", str(run_folder), "-o", str(tmp_path / "t2"), "--trials", "5"])
    assert bad.exit_code == 2 and "not among the fitted analytes" in " ".join(bad.output.split())
    # graded CRS records in another file: the toxicity model is fitted to them first
    from tests.test_trial_simulation import cohort_with_crs_grades

    cohort_with_crs_grades(tmp_path, n=30)
    fitted = invoke("trial", "simulate", run_folder, "-o", tmp_path / "t3", "--doses", "1e8,3e8", "--signal",
                    "transgene:cmax", "--reference", "2e4", "--trials", "20", "--draws", "20",
                    "--adverse-events", tmp_path / "pk_crs.csv")
    assert "fitted to 30 subjects" in " ".join(fitted.output.split())


@pytest.fixture(scope="module")
def report(run_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    invoke("trial", "simulate", run_folder, "-o", folder / "trial", "--doses", "1e8,3e8", "--signal",
           "transgene:cmax", "--reference", "2e4", "--trials", "20", "--draws", "20")
    invoke("report", run_folder, "-o", folder / "report.html", "--trial", folder / "trial")
    return folder / "report.html"


def test_report_contains_every_section(report):
    page = report.read_text()
    for key, title in SECTIONS.items():
        assert f'id="{key}"' in page and title in page
    assert "src=\"http" not in page and "src='http" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 4  # individual fits, GOF, VPC, pcVPC
    assert "No dose selection: no target can be evaluated" in page  # default targets need B cells, IL-6, IgG
    assert "The dose each design would select" in page and "at their priors" in page


def test_report_renders_in_headless_chromium_with_every_image_loaded(report, tmp_path):
    assert CHROMIUM, "this test needs Debian's chromium package: `./run test` installs it (apt-get install chromium)"
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-images',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);"
             "document.body.setAttribute('data-sections',[...document.querySelectorAll('section h2')]"
             ".filter(h=>h.offsetHeight>0).length);});</script>")
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                               "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body, done.stderr[-2000:]
    loaded, total = re.search(r'data-images="(\d+)/(\d+)"', body.group(0)).groups()
    assert int(total) >= 4 and loaded == total
    assert re.search(r'data-sections="(\d+)"', body.group(0)).group(1) == str(len(SECTIONS))


MARKUP = "<script>alert('x')</script>"


def test_every_user_string_that_reaches_the_report_is_escaped(tmp_path):
    """Markup in subject labels, a covariate's name and values, the data file's name, target and
    scenario names, the dose selection's reasons and a leaderboard never reaches the page raw."""
    import pkpd
    from pkpd.dose import Target, select_dose
    from pkpd.dose.selection import Scenario
    from pkpd.report import write_report

    frame = pd.read_csv(_markup_data(tmp_path), dtype=str, keep_default_na=False)
    frame["USUBJID"] = [f"{MARKUP}-{i}" for i in frame["ID"]]
    frame["DISEASE"] = "<img src=x onerror=alert(1)>"
    frame["<b>ARM</b>"] = "<i>arm</i>"
    data = tmp_path / "<b>data<i>.csv"
    frame.to_csv(data, index=False)
    cohort = pkpd.read_cohort(data)
    result = pkpd.fit(load("multiphasic"), cohort, chains=2, draws=30, tune=30, seed=1, progress=False)
    selection = select_dose(result, ["3e8", "6e8"], draws=10, patients=3, targets=[
        Target(f"peak{MARKUP}", "transgene", "cmax", ">=", 5000.0, "efficacy"),
        Target("<b>il6</b>", "il6", "cmax", "<", 1000.0, "safety")],
        scenarios=[Scenario(MARKUP, True)])
    board = pd.DataFrame([{"dataset": MARKUP, "model": MARKUP, "variant": "<u>v</u>", "rank": 0, "elpd_loo": -1.0,
                           "se": 0.1, "d_elpd": 0.0, "d_se": 0.0, "weight": 1.0, "pareto_k_bad": 0,
                           "converged": False, "status": "failed", "reason": MARKUP, "seconds": 1.0}])
    page = write_report(result, tmp_path / "report.html", selection=selection, leaderboard=board).read_text()
    for raw in (MARKUP, "<img src=x", "<b>ARM</b>", "<i>arm</i>", "<b>data<i>", "<b>il6</b>", "<u>v</u>"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()


def _markup_data(tmp_path):
    path = tmp_path / "plain.csv"
    write_nonmem(simulate(load("multiphasic"), ["3e8", "6e8"], n=3, seed=5), path)
    return path


def test_a_truncated_posterior_is_a_located_error_for_every_command(run_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_folder, broken)
    posterior = broken / "posterior.nc"
    posterior.write_bytes(posterior.read_bytes()[: posterior.stat().st_size // 2])
    for command in (["ppc", broken, "-o", tmp_path / "p"], ["dose", broken, "-o", tmp_path / "d"],
                    ["report", broken, "-o", tmp_path / "r.html"]):
        result = runner.invoke(app, [str(a) for a in command])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "cannot be read" in said and "damaged or incomplete: re-run the fit" in said
        assert not result.exception or isinstance(result.exception, SystemExit)
    assert not any((tmp_path / name).exists() for name in ("p", "d", "r.html"))


@pytest.mark.parametrize("attribute, value, wording", [
    ("model_sources", "{not json", "record of the model's source is damaged"),
    ("model_sources", '[{"module": "multiphasic", "file": "x.py", "text": "import os", "sha256": "0"}]',
     "does not match its hash"),
    ("spec", "[1, 2]", "record of the population specification is damaged"),
])
def test_a_tampered_run_folder_is_refused_and_runs_nothing(run_folder, tmp_path, attribute, value, wording):
    import xarray as xr

    tampered = tmp_path / "tampered"
    shutil.copytree(run_folder, tampered)
    with xr.open_datatree(tampered / "posterior.nc", engine="h5netcdf") as opened:
        tree = opened.load()
    tree.attrs[attribute] = value
    tree.to_netcdf(tampered / "posterior.nc", engine="h5netcdf")
    result = runner.invoke(app, ["ppc", str(tampered), "-o", str(tmp_path / "p")])
    assert result.exit_code == 2 and wording in " ".join(result.output.split()), result.output
    assert not (tmp_path / "p").exists()


def test_a_damaged_dose_folder_is_refused_by_the_report(run_folder, tmp_path):
    dose = tmp_path / "dose"
    invoke("dose", run_folder, "-o", dose, "--doses", "3e8", "--target", "peak:transgene:cmax>=5000:efficacy",
           "--draws", "10", "--patients", "3")
    damages = {
        "recommendation.json": ('{"efficacy_level": 0.8, "trunc', "cannot be read"),
        "pta.csv": ("a,b\n1,2\n", "pta.csv lacks the column(s) dose"),
    }
    for name, (text, wording) in damages.items():
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(dose, broken)
        (broken / name).write_text(text)
        result = runner.invoke(app, ["report", str(run_folder), "-o", str(tmp_path / "r.html"), "--dose", str(broken)])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and wording in said and "run `pkpd dose` again" in said
    rec = json.loads((dose / "recommendation.json").read_text())
    rec["efficacy_level"] = "<script>"
    broken = tmp_path / "broken-types"
    shutil.copytree(dose, broken)
    (broken / "recommendation.json").write_text(json.dumps(rec))
    result = runner.invoke(app, ["report", str(run_folder), "-o", str(tmp_path / "r.html"), "--dose", str(broken)])
    assert result.exit_code == 2 and "efficacy_level must be a number" in " ".join(result.output.split())
    assert not (tmp_path / "r.html").exists()
