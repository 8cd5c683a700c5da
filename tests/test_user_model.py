"""A user's own model file on a plain PK dataset, end to end, as a new user would run it.

Hours and mg, doses named by CMT, observations named by a code on the command line, no CAR-T
columns at all (no product, no lymphodepletion); the fit's run folder must reopen in ppc, dose and
report after the model file is deleted.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.fit import FitResult
from pkpd.fit.priors import load_priors, parse_assignment, parse_prior
from pkpd.models import HalfNormal, LogNormal, load
from pkpd.simulate import simulate

MODELS = Path(__file__).parent / "models"
runner = CliRunner()


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory):
    """A plain ID/TIME/AMT/DV/EVID/MDV/CMT file: oral doses (CMT 1), concentrations (CMT 2)."""
    root = tmp_path_factory.mktemp("user")
    model = load(str(MODELS / "oral_1cpt.py"))
    cohort = simulate(model, ["100 mg", "200 mg x2 q12h"], n=5, seed=4, product=None,
                      times=[0.5, 1, 2, 3, 4, 6, 8, 12, 24, 36, 48])
    rows = []
    for _, d in cohort.doses.iterrows():
        rows.append({"ID": d["subject"], "TIME": d["time"], "AMT": d["amount"], "DV": ".", "EVID": 1, "MDV": 1, "CMT": 1})
    for _, o in cohort.observations.iterrows():
        rows.append({"ID": o["subject"], "TIME": o["time"], "AMT": 0, "DV": o["value"], "EVID": 0, "MDV": 0, "CMT": 2})
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable")
    frame.to_csv(root / "pk.csv", index=False)
    shutil.copy(MODELS / "oral_1cpt.py", root / "my_model.py")
    return root


OPTIONS = ("--time-unit", "h", "--dose-unit", "mg", "--analyte-code", "2=conc", "--unit", "conc=mg/L")


def test_a_plain_file_reads_with_codes_and_units(plain_file):
    result = invoke("data", "check", plain_file / "pk.csv", *OPTIONS)
    assert "times in h" in result.output and "conc" in result.output
    unnamed = invoke("data", "check", plain_file / "pk.csv", "--time-unit", "h", code=1)
    assert "unknown-analyte" in unnamed.output or "not known" in unnamed.output


@pytest.fixture(scope="module")
def run_folder(plain_file):
    invoke("fit", plain_file / "my_model.py", plain_file / "pk.csv", *OPTIONS, "-o", plain_file / "run",
           "--chains", "2", "--draws", "60", "--tune", "60", "--seed", "3", "--no-progress",
           "--prior", "ka=LogNormal(1.5,0.8)", "--prior", "omega_cl=HalfNormal(0.6)", "--fixed-effect", "f")
    return plain_file / "run"


def test_the_run_holds_the_model_source_and_the_spec(run_folder):
    assert (run_folder / "model" / "my_model.py").is_file()
    result = FitResult.load(run_folder)
    assert result.model.sources[0].file == "my_model.py"
    assert result.spec.priors == {"ka": LogNormal(1.5, 0.8), "omega_cl": HalfNormal(0.6)}
    assert "f" in result.spec.estimated and "f" not in result.spec.iiv
    table = result.parameter_table()
    assert {"sigma_conc", "sigma_add_conc"} <= set(table["name"])  # the combined error: both SDs estimated


def test_the_run_reopens_after_the_model_file_is_deleted(run_folder, tmp_path):
    (run_folder.parent / "my_model.py").unlink(missing_ok=True)
    moved = tmp_path / "moved-run"
    shutil.copytree(run_folder, moved)
    invoke("ppc", moved, "-o", tmp_path / "ppc", "--replicates", "20", "--draws", "10")
    names = {p.name for p in (tmp_path / "ppc").iterdir()}
    assert {"vpc_conc.png", "individual_conc.png", "gof_conc.png"} <= names  # one stratum: no CAR-T columns
    vpc = pd.read_csv(tmp_path / "ppc" / "vpc.csv")
    assert set(vpc["stratum"]) == {"all subjects"}
    invoke("dose", moved, "-o", tmp_path / "dose", "--doses", "100 mg,100 mg x3 q12h", "--draws", "10",
           "--patients", "4", "--target", "exposure:conc:auc_0_24h>=50:efficacy",
           "--target", "peak:conc:cmax<40:safety")
    pta = pd.read_csv(tmp_path / "dose" / "pta.csv")
    assert set(pta["dose"]) == {"100 mg", "100 mg x3 q12h"} and set(pta["scenario"]) == {"all subjects"}
    invoke("report", moved, "-o", tmp_path / "report.html", "--dose", tmp_path / "dose")
    page = (tmp_path / "report.html").read_text()
    assert "my_model.py" in page and "times in h" in page


def test_a_tampered_model_source_is_refused(run_folder, tmp_path):
    import json

    import xarray as xr

    copy = tmp_path / "tampered"
    shutil.copytree(run_folder, copy)
    with xr.open_datatree(copy / "posterior.nc", engine="h5netcdf") as opened:
        tree = opened.load()
    sources = json.loads(tree.attrs["model_sources"])
    sources[0]["text"] += "\nimport os  # added later\n"
    tree.attrs["model_sources"] = json.dumps(sources)
    tree.to_netcdf(tmp_path / "edited.nc", engine="h5netcdf")
    (tmp_path / "edited.nc").replace(copy / "posterior.nc")
    result = runner.invoke(app, ["ppc", str(copy), "-o", str(tmp_path / "p")])
    assert result.exit_code == 2 and "does not match its hash" in " ".join(result.output.split())


def test_priors_by_name(tmp_path):
    assert parse_prior("LogNormal(1.5, 0.5)") == LogNormal(1.5, 0.5)
    assert parse_assignment("omega_ka=HalfNormal(1)") == ("omega_ka", HalfNormal(1.0))
    for text, wording in (("Normal(1, 2)", "is not LogNormal"), ("LogNormal(1)", "takes 2 number"),
                          ("LogNormal(-1, 1)", "median > 0")):
        with pytest.raises(ValueError, match=wording):
            parse_prior(text, "ka")
    (tmp_path / "priors.toml").write_text('[priors]\nka = "LogNormal(2, 0.3)"\ncl = [0.1, 0.5]\n')
    assert load_priors(tmp_path / "priors.toml") == {"ka": LogNormal(2, 0.3), "cl": LogNormal(0.1, 0.5)}
    from pkpd.fit import PopulationSpec

    model = load(str(MODELS / "oral_1cpt.py"))
    for priors, wording in (({"nope": LogNormal(1, 1)}, "has no parameter 'nope'"),
                            ({"omega_f": HalfNormal(1)}, "f has no inter-individual variability"),
                            ({"ka": HalfNormal(1)}, "takes a LogNormal"),
                            ({"sigma_add_conc": HalfNormal(1)}, "takes a LogNormal")):
        with pytest.raises(ValueError, match=wording):
            PopulationSpec.default(model, priors=priors)


def test_a_parameter_unit_in_another_time_unit_is_refused():
    from pkpd.models import Module, ModelError, Parameter

    wrong = Module(name="wrong", description="a rate per day in a model in hours",
                   parameters=(Parameter("k", 0.1, "1/d"),), closed_form=lambda t, p, c, x, m: {"a": m.exp(-p.k * t)},
                   time_unit="h")
    with pytest.raises(ModelError, match="uses day but model wrong works in h"):
        load(wrong)
    np.testing.assert_equal(load(Module(name="right", description="", parameters=(Parameter("k", 0.1, "1/h"),),
                                        closed_form=lambda t, p, c, x, m: {"a": m.exp(-p.k * t)},
                                        time_unit="h")).time_unit, "h")
