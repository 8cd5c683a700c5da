"""Dose selection: PTA against an analytic answer, recommendation rules, bad input."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import xarray as xr

from pkpd.dose import Target, recommend, select_dose
from pkpd.fit.population import PopulationSpec
from pkpd.fit.result import FitResult
from pkpd.models import load
from pkpd.simulate import simulate

MU_CMAX, OMEGA_CMAX = math.log(24000.0), 0.65


def synthetic_run(draws: int = 40, cmax: float = 24000.0) -> FitResult:
    """A multiphasic 'fit' whose posterior is a point: log Cmax ~ N(log cmax, OMEGA_CMAX) between
    subjects, peak exactly on a sampling day (Tmax = 9 d), negligible residual error."""
    model = load("multiphasic")
    cohort = simulate(model, ["3e8"], n=4, seed=1)
    spec = PopulationSpec.default(model, iiv=["cmax"], fixed_effects=["tmax"])
    K = len(spec.estimated)
    mu = np.log([cmax if n == "cmax" else 9.0 for n in spec.estimated])
    theta = np.tile(np.exp(mu), (1, draws, len(cohort.subject_ids), 1))
    posterior = xr.Dataset(
        {"mu": (("chain", "draw", "parameter"), np.tile(mu, (1, draws, 1))),
         "omega": (("chain", "draw", "iiv_parameter"), np.full((1, draws, 1), OMEGA_CMAX)),
         "sigma": (("chain", "draw", "analyte"), np.full((1, draws, 1), 1e-9)),
         "theta": (("chain", "draw", "subject", "parameter"), theta)},
        coords={"chain": [0], "draw": np.arange(draws), "parameter": spec.estimated, "iiv_parameter": ["cmax"],
                "analyte": ["transgene"], "subject": cohort.subject_ids})
    assert K == 2
    tree = xr.DataTree.from_dict({"posterior": posterior})
    tree.attrs.update(model=model.name, model_hash=model.hash, analytes=json.dumps(["transgene"]))
    return FitResult(tree, model, spec, cohort)


def test_pta_matches_the_log_normal_answer():
    run = synthetic_run()
    threshold = 24000.0 * math.exp(0.5 * OMEGA_CMAX)
    target = Target("peak", "transgene", "cmax", ">=", threshold, "efficacy")
    selection = select_dose(run, ["3e8"], targets=[target], draws=40, patients=250, seed=3)
    row = selection.pta.iloc[0]
    expected = st.norm.sf(0.5)  # P(log Cmax >= mu + 0.5 omega) = 0.3085
    assert row["probability"] == pytest.approx(expected, abs=0.02)
    # no parameter uncertainty: the interval is binomial noise around the answer
    half_width = 1.645 * math.sqrt(expected * (1 - expected) / 250)
    assert row["lower"] == pytest.approx(expected - half_width, abs=0.03)
    assert row["upper"] == pytest.approx(expected + half_width, abs=0.03)
    # exposure summary: median Cmax is the typical value
    cmax = selection.exposure.query("metric == 'cmax'").iloc[0]
    assert cmax["median"] == pytest.approx(24000.0, rel=0.05)


def test_regimens_simulated_in_groups_when_their_records_exceed_the_cap(monkeypatch):
    # the regimens of a scenario share one design; past RECORDS_PER_CALL records they are split
    # into groups, each regimen still judged on its own patients
    import pkpd.dose.selection as selection_module

    run = synthetic_run()
    threshold = 24000.0 * math.exp(0.5 * OMEGA_CMAX)
    target = Target("peak", "transgene", "cmax", ">=", threshold, "efficacy")
    original, groups = selection_module.VirtualPatients._simulate, []

    def counted(self, scenario, regimens, *args):
        groups.append(list(regimens))  # the regimens of this call
        return original(self, scenario, regimens, *args)

    monkeypatch.setattr(selection_module.VirtualPatients, "_simulate", counted)
    monkeypatch.setattr(selection_module, "RECORDS_PER_CALL", 1)  # one regimen per group
    selection = select_dose(run, ["1e8", "3e8", "6e8"], targets=[target], draws=40, patients=250, seed=3)
    assert groups == [[0], [1], [2]]
    assert list(selection.pta["dose_amount"]) == [1e8, 3e8, 6e8]
    first = selection.pta[selection.pta["dose"] == "3e8"].iloc[0]
    assert first["probability"] == pytest.approx(st.norm.sf(0.5), abs=0.02)


def test_virtual_patients_are_solved_looser_only_where_the_check_allows(monkeypatch):
    # virtual patients carry residual error: their ODEs are solved at rtol VIRTUAL_RTOL when the
    # template's predictions above the LLOQ stay within VIRTUAL_DIFFERENCE of the fit's tolerance
    from types import SimpleNamespace

    import pkpd.dose.selection as selection_module
    from pkpd.simulate import draw_parameters
    from pkpd.simulate.compiled import Design, Tolerances, predict_compiled

    model = load("antigen_driven")
    cohort = simulate(model, ["1e6/kg"], n=30, seed=4, analytes=["transgene", "bcells"])
    design = Design(model, cohort)
    P = draw_parameters(model, 30, np.random.default_rng(5))[model.parameter_names].to_numpy(float)
    fit = SimpleNamespace(spec=SimpleNamespace(steps=Tolerances()), cohort=cohort)
    steps, difference = selection_module.virtual_steps(fit, design, P)
    assert steps == Tolerances(rtol=selection_module.VIRTUAL_RTOL, atol=selection_module.VIRTUAL_ATOL,
                              interpolate=True)
    assert 0 < difference <= selection_module.VIRTUAL_DIFFERENCE
    exact, _ = predict_compiled(design, P)
    quick, _ = predict_compiled(design, P, steps=steps)
    lloq = np.array([cohort.lloq.get(a, 0.0) for a in design.analyte_names])[design.analyte]
    above = exact > lloq
    assert np.max(np.abs(quick[above] / exact[above] - 1)) == pytest.approx(difference)
    # a stricter limit than the difference found: the fit's own tolerances
    monkeypatch.setattr(selection_module, "VIRTUAL_DIFFERENCE", difference / 2)
    assert selection_module.virtual_steps(fit, design, P) == (Tolerances(), difference)
    # a fit already looser (and interpolating records) keeps its own
    loose = Tolerances(rtol=1e-2, atol=1e-5, interpolate=True)
    assert selection_module.virtual_steps(SimpleNamespace(spec=SimpleNamespace(steps=loose), cohort=cohort), design,
                                          P) == (loose, 0.0)
    # what was used is recorded with the selection
    run = synthetic_run()
    selection = select_dose(run, ["3e8"], targets=[Target("peak", "transgene", "cmax", ">=", 1e3, "efficacy")],
                            draws=10, patients=5)
    note = selection.settings["solver"][0]
    assert note["model"] == "multiphasic" and note["fit_rtol"] == Tolerances().rtol and "largest_relative_difference" in note
    assert note["interpolate"] is True


def test_targets_on_unfitted_analytes_are_skipped_with_a_reason():
    run = synthetic_run()
    targets = [Target("peak", "transgene", "cmax", ">=", 1e3, "efficacy"),
               Target("aplasia", "bcells", "aplasia_duration", ">=", 90, "efficacy")]
    selection = select_dose(run, ["3e8"], targets=targets, draws=10, patients=5)
    assert set(selection.pta["target"]) == {"peak"}
    assert "did not include bcells" in selection.recommendation["skipped_targets"][0]["reason"]
    with pytest.raises(ValueError, match="no target can be evaluated"):
        select_dose(run, ["3e8"], targets=targets[1:], draws=10, patients=5)


def test_recommendation_is_the_lowest_dose_meeting_every_level():
    rows = []
    for dose, cells, eff, safe in (("1e8", 1e8, 0.5, 0.99), ("3e8", 3e8, 0.85, 0.95), ("6e8", 6e8, 0.95, 0.85)):
        for target, kind, p in (("aplasia", "efficacy", eff), ("igg", "safety", safe)):
            rows.append({"scenario": "A", "dose": dose, "dose_amount": cells, "dose_unit": "cells",
                         "dose_total": cells, "target": target, "kind": kind, "definition": target,
                         "probability": p, "lower": p - 0.05, "upper": p + 0.05})
    rec = recommend(pd.DataFrame(rows), 0.8, 0.9)
    assert rec["scenarios"]["A"]["recommended_dose"] == "3e8"
    assert rec["recommended"]["scenario"] == "A"
    strict = recommend(pd.DataFrame(rows), 0.99, 0.9)
    assert strict["recommended"] is None
    assert "no candidate dose" in strict["scenarios"]["A"]["reason"]
    json.dumps(rec)
    # no dose meets efficacy 0.99: efficacy binds; 6e8 falls short by 0.04 (efficacy) and 0.05
    # (safety), 3e8 by 0.14, so 6e8 is the closest, named as not meeting the levels
    entry = strict["scenarios"]["A"]
    assert entry["binding_targets"] == ["aplasia"] and entry["closest_dose"] == "6e8"
    assert entry["closest_shortfall"] == pytest.approx({"aplasia": 0.04, "igg": 0.05})
    assert "Closest to the levels, not meeting them: 6e8" in entry["reason"]
    assert strict["closest"]["dose"] == "6e8" and strict["closest"]["scenario"] == "A"
    json.dumps(strict)


def test_bad_targets_and_levels_are_clear_errors():
    with pytest.raises(ValueError, match="is not NAME:ANALYTE:METRIC"):
        Target.parse("aplasia bcells 90")
    with pytest.raises(ValueError, match="metric 'peak_time'"):
        Target.parse("x:bcells:peak_time>=3:efficacy")
    with pytest.raises(ValueError, match="kind 'toxicity'"):
        Target.parse("x:bcells:cmax>=3:toxicity")
    run = synthetic_run()
    with pytest.raises(ValueError, match="efficacy_level must be a probability"):
        select_dose(run, ["3e8"], efficacy_level=1.5)
    with pytest.raises(ValueError, match="regimen 'lots'"):
        select_dose(run, ["lots"], targets=[Target("p", "transgene", "cmax", ">=", 1.0, "efficacy")])
