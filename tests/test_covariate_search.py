"""Stepwise covariate search ([search] in a comparison spec): validation, and the true effect
found among several candidates on a simulated cohort (slow: a dozen small NUTS fits)."""

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.compare import SpecError, compare, load_spec
from pkpd.compare.search import paired_difference, variant_name
from pkpd.data import write_nonmem
from pkpd.data.cohort import Cohort
from pkpd.models import load
from pkpd.simulate import simulate

TRUE_EFFECT = 1.6  # log Cmax is higher by this much after lymphodepletion (5-fold)

SPEC = """
[run]
name = "scm"
seed = 5
chains = 2
draws = 300
tune = 300
max_refits = 0
loo_samples = 100

[[datasets]]
name = "sim"
path = "sim.csv"

[[models]]
model = "multiphasic"
iiv = ["cmax", "tmax"]

[search]
candidates = ["cmax~lymphodepletion", "cmax~weight:power", "tmax~disease"]
{extra}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four arms crossing lymphodepletion with weight and disease; only lymphodepletion acts
    (on Cmax), so weight and disease are candidates without an effect."""
    path = tmp_path_factory.mktemp("scm")
    model = load("multiphasic")
    arms = {}
    for i, (ld, weight, disease) in enumerate([(True, 55.0, "SLE"), (True, 85.0, "SSc"),
                                               (False, 55.0, "SSc"), (False, 85.0, "SLE")]):
        cmax = 24000.0 * (math.exp(TRUE_EFFECT) if ld else 1.0)
        arms[f"arm{i + 1}"] = simulate(model, ["3e8"], n=8, seed=40 + i, lymphodepletion=ld, weight=weight,
                                       disease=disease, typical={"cmax": cmax})
    write_nonmem(Cohort.pooled(arms), path / "sim.csv")
    return path


def write_spec(folder, extra=""):
    path = folder / "scm.toml"
    path.write_text(SPEC.format(extra=extra))
    return path


@pytest.mark.parametrize("extra, wording", [
    ("model = 'nonesuch'", "search.model must name one of the [[models]]"),
    ("dataset = 'other'", "search.dataset must name one of the [[datasets]]"),
    ("forward = -1", "search.forward must be a number of standard errors"),
    ("steps = 3", "unknown key(s) search.steps"),
])
def test_a_malformed_search_block_gets_located_messages(folder, extra, wording):
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(folder, extra))
    assert wording in str(info.value)


def test_search_candidates_are_checked_against_the_model_and_the_data(folder):
    path = folder / "bad.toml"
    path.write_text(SPEC.format(extra="").replace('"tmax~disease"', '"zz~disease", "tmax~smoking"'))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert "search.candidates[3]: model multiphasic has no parameter 'zz'" in text
    assert "search.candidates[4]: dataset sim has no covariate 'smoking'" in text


def test_variant_names_and_the_paired_difference():
    assert variant_name(()) == "scm.base"
    assert variant_name(("tmax~weight:power", "cmax~lymphodepletion")) == "scm.cmax-lymphodepletion.tmax-weight-power"
    a = pd.Series([1.0, 2.0, 3.0], index=["x", "y", "z"])
    b = pd.Series([0.0, 2.0, 1.0], index=["z", "y", "x"])  # aligned by subject, not position
    d, se = paired_difference(a, b)
    assert d == pytest.approx(3.0) and se == pytest.approx(math.sqrt(3 * pd.Series([0.0, 0.0, 3.0]).var(ddof=0)))


@pytest.mark.slow
def test_the_search_finds_the_true_effect_and_only_it(folder):
    result = compare(write_spec(folder), folder / "run", workers=2)
    assert result.search is not None and result.search.relations == ("cmax~lymphodepletion",)
    log = pd.read_csv(folder / "run" / "search_log.csv")
    first = log[log["step"] == 1].set_index("relation")
    assert first.loc["cmax~lymphodepletion", "decision"] == "included"
    assert first.loc["cmax~lymphodepletion", "z"] > 2
    later = log[log["step"] == 2]
    assert (later["decision"].str.contains("forward inclusion stops") | (later["z"] <= 2)).all()
    record = json.loads((folder / "run" / "search.json").read_text())
    assert record["final"] == {"relations": ["cmax~lymphodepletion"], "fit": result.search.fit_id}
    # the final model is a fit like any other: ranked on the leaderboard
    assert (result.leaderboard["variant"] == "scm.cmax-lymphodepletion").any()
    # a re-run resumes every fit and takes the same path
    again = CliRunner().invoke(app, ["compare", str(write_spec(folder)), "-o", str(folder / "run")])
    assert again.exit_code == 0, again.output
    assert "cmax~lymphodepletion" in again.output and pd.read_csv(folder / "run" / "search_log.csv").equals(log)
