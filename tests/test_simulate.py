"""The simulator: schedules, doses, variability, residual error, censoring, reproducibility."""

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.data import read_cohort
from pkpd.models import load
from pkpd.nca import nca
from pkpd.simulate import (covariate_matrix, draw_parameters, fine_schedule, parse_regimen,
                           predict, simulate, simulate_typical, solve, trial_schedule)


def test_trial_schedule():
    days = trial_schedule()
    assert list(days[:10]) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert days[-1] == 365 and len(days) == 22
    assert days[10] == 30 and np.all(np.diff(days[10:]) >= 30) and np.all(np.diff(days[10:]) <= 31)
    assert trial_schedule(baseline=True)[0] == -1
    fine = fine_schedule()
    assert np.max(np.diff(fine[fine <= 30])) <= 0.25 and fine[-1] == 365


@pytest.mark.parametrize("text, expected", [("3e8", (3e8, "cells", 3e8)), ("1e6/kg", (1e6, "cells/kg", 7e7)),
                                            ("4.5E8", (4.5e8, "cells", 4.5e8)), (6e8, (6e8, "cells", 6e8)),
                                            ("100 mg", (100, "mg", 100)), ("1.5 mg/kg", (1.5, "mg/kg", 105))])
def test_single_doses(text, expected):
    doses = parse_regimen(text).doses("1", 70.0, "d")
    assert len(doses) == 1 and doses[["amount", "unit", "absolute"]].iloc[0].tolist() == list(expected)


def test_regimens_repeat_infuse_split_and_reinfuse():
    six = parse_regimen("100 mg x6 q12h over 30min").doses("1", 70.0, "h")
    assert six["time"].tolist() == [0, 12, 24, 36, 48, 60] and six["duration"].tolist() == [0.5] * 6
    split = parse_regimen("3e8 split 10/30/60 q1d + 3e8 at 90d").doses("1", 70.0, "d")
    assert split["time"].tolist() == [0, 1, 2, 90] and split["amount"].tolist() == [3e7, 9e7, 1.8e8, 3e8]
    assert parse_regimen("100 mg x2 q12h").doses("1", 70.0, "d")["time"].tolist() == [0, 0.5]


@pytest.mark.parametrize("text, wording", [("lots", "is not AMOUNT"), ("-3e8", "is not AMOUNT"), ("0", "positive"),
                                           ("1e6/m2", "unknown dose unit"), ("100 mg x3", "need an interval"),
                                           ("3e8 q1y", "unknown time unit")])
def test_bad_regimens_are_clear_errors(text, wording):
    with pytest.raises(ValueError, match=wording):
        parse_regimen(text)


def test_reproducible_with_a_seed():
    model = load("antigen_driven")
    a = simulate(model, ["3e8"], n=4, seed=7)
    b = simulate(model, ["3e8"], n=4, seed=7)
    c = simulate(model, ["3e8"], n=4, seed=8)
    assert a.equals(b) and not a.equals(c)


def test_vectorised_solve_equals_one_subject_at_a_time():
    model = load("antigen_driven+cytokines")
    rng = np.random.default_rng(1)
    params = draw_parameters(model, 5, rng)
    P = np.vstack([params[p].to_numpy() for p in model.parameter_names])
    C = covariate_matrix(5, dose=np.array([1e7, 7e7, 3e8, 6e8, 1e9]), ld=np.array([1, 0, 1, 0, 1]), weight=70)
    t = trial_schedule(baseline=True)
    together = solve(model, t, P, C, rtol=1e-10, atol=1e-14).values
    for j in range(5):
        alone = solve(model, t, P[:, [j]], C[:, [j]], rtol=1e-10, atol=1e-14).values
        for analyte in together:
            np.testing.assert_allclose(together[analyte][:, j], alone[analyte][:, 0], rtol=1e-6)


def test_cells_per_kg_doses_use_the_weight():
    model = load("antigen_driven")
    light = simulate(model, ["1e6/kg"], n=1, weight=50, iiv=False, residual=False)
    heavy = simulate(model, ["1e6/kg"], n=1, weight=100, iiv=False, residual=False)
    assert light.doses["absolute"].iloc[0] == 5e7 and heavy.doses["absolute"].iloc[0] == 1e8
    assert light.subjects["dose_level"].iloc[0] == "1.0e6 cells/kg"
    tg = lambda c: c.analyte_observations("transgene")["value"].to_numpy()
    assert tg(light)[1] < tg(heavy)[1]  # day 0: fewer cells infused


def test_censoring_below_lloq_and_residual_error():
    model = load("antigen_driven")
    cohort = simulate(model, ["3e8"], n=30, seed=2)
    obs = cohort.observations
    blq = obs[obs["censored"] == 1]
    assert len(blq) > 0 and np.all(blq["value"] == blq["lloq"])
    quantified = obs[obs["censored"] == 0]
    assert np.all(quantified["value"] >= quantified["lloq"])
    # residual error: log-scale SD of observed/predicted transgene close to the model's 0.5
    truth = simulate(model, ["3e8"], n=30, seed=2, residual=False)
    both = (obs["analyte"] == "transgene") & (obs["censored"] == 0) & (truth.observations["censored"] == 0)
    ratio = np.log(obs.loc[both, "value"] / truth.observations.loc[both, "value"])
    assert ratio.std() == pytest.approx(model.observations["transgene"].sigma, rel=0.15)


def test_inter_individual_variability_and_correlation():
    model = load("multiphasic")
    rng = np.random.default_rng(3)
    params = draw_parameters(model, 4000, rng, correlation={("cmax", "alpha"): 0.6})
    logs = np.log(params[["cmax", "alpha"]])
    assert logs["cmax"].std() == pytest.approx(model.parameter("cmax").iiv, rel=0.05)
    assert np.corrcoef(logs["cmax"], logs["alpha"])[0, 1] == pytest.approx(0.6, abs=0.04)
    assert np.exp(logs["cmax"].median()) == pytest.approx(24000, rel=0.05)
    with pytest.raises(ValueError, match="not positive definite"):
        draw_parameters(model, 10, rng, correlation={("cmax", "alpha"): 1.5})


def test_simulated_cohort_feeds_nca_and_files(tmp_path):
    model = load("antigen_driven+cytokines+immunoglobulins")
    cohort = simulate(model, ["3e8", "6e8"], n=3, seed=4, product="CD19/BCMA", lymphodepletion=False)
    assert set(cohort.subjects["product"]) == {"CD19/BCMA"}
    assert not cohort.subjects["lymphodepletion"].any()
    table = nca(cohort)
    assert table.loc[table["analyte"] == "transgene", "cmax"].notna().all()
    from pkpd.data import write_nonmem

    write_nonmem(cohort, tmp_path / "sim.csv")
    assert read_cohort(tmp_path / "sim.csv").equals(cohort)


def test_predict_matches_the_noise_free_simulation():
    model = load("antigen_driven")
    cohort, params = simulate(model, ["3e8"], n=3, seed=5, return_parameters=True)
    noise_free = simulate(model, ["3e8"], n=3, seed=5, residual=False, lloq={a: 0.0 for a in model.analytes})
    pred = predict(model, cohort, params)
    np.testing.assert_allclose(pred, noise_free.observations["value"], rtol=1e-9)


def test_simulate_with_the_compiled_solver_matches_lsoda():
    # steps=Tolerances(): the fits' compiled solver instead of LSODA, through a split dose and a
    # re-infusion; the same random draws, the same censoring
    from pkpd.simulate import SolverError
    from pkpd.simulate.compiled import Tolerances

    model = load("antigen_driven")
    regimens = ["3e8 split 10/30/60 q1d + 3e8 at 90d", "1e6/kg"]
    reference = simulate(model, regimens, n=20, seed=8)
    compiled = simulate(model, regimens, n=20, seed=8, steps=Tolerances())
    a, b = reference.observations, compiled.observations
    assert (a["censored"] == b["censored"]).all() and (a["time"] == b["time"]).all()
    quantified = a["censored"] == 0
    np.testing.assert_allclose(b.loc[quantified, "value"], a.loc[quantified, "value"], rtol=1e-3)
    params = simulate(model, regimens, n=20, seed=8, return_parameters=True)[1]
    with pytest.raises(ValueError, match="options of the reference solver"):
        predict(model, reference, params, Tolerances(), rtol=1e-8)
    with pytest.raises(SolverError, match="no finite prediction for subject"):
        predict(model, reference, params, Tolerances(max_steps=3))


def test_typical_curves_are_noise_free_on_a_fine_grid():
    model = load("multiphasic")
    typical = simulate_typical(model, ["3e8", "6e8"])
    obs = typical.analyte_observations("transgene")
    assert obs["subject"].nunique() == 2 and (obs["censored"] == 0).all()
    t = obs[obs["subject"] == "1"]["time"].to_numpy()
    assert np.max(np.diff(t[(t >= 0) & (t <= 30)])) <= 0.25
    assert obs["value"].max() == pytest.approx(24000, rel=0.05)  # grid point 9.25 d, peak at 9.3 d


runner = CliRunner()


def test_simulate_command(tmp_path):
    out = tmp_path / "sim.csv"
    result = runner.invoke(app, ["simulate", "antigen_driven", "--dose", "3e8", "--dose", "1e6/kg", "--n", "2",
                                 "--seed", "1", "--product", "CD19/CD20", "--no-lymphodepletion", "-o", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert {"ID", "TIME", "DV", "ANALYTE", "EVID", "CENS"} <= set(frame.columns)
    cohort = read_cohort(out)
    assert len(cohort.subjects) == 4 and set(cohort.subjects["dose_level"]) == {"3.0e8 cells", "1.0e6 cells/kg"}
    fast = tmp_path / "compiled.csv"
    result = runner.invoke(app, ["simulate", "antigen_driven", "--dose", "3e8", "--dose", "1e6/kg", "--n", "2",
                                 "--seed", "1", "--product", "CD19/CD20", "--no-lymphodepletion", "--compiled",
                                 "-o", str(fast)])
    assert result.exit_code == 0, result.output
    quick = read_cohort(fast).observations
    np.testing.assert_allclose(quick["value"], cohort.observations["value"], rtol=1e-3)
    typical = tmp_path / "typical.csv"
    result = runner.invoke(app, ["simulate", "multiphasic", "--typical", "-o", str(typical)])
    assert result.exit_code == 0 and read_cohort(typical).observations["time"].nunique() > 300
    bad = runner.invoke(app, ["simulate", "antigen_driven", "--dose", "lots", "-o", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "regimen 'lots'" in bad.output and not (tmp_path / "x.csv").exists()


def test_models_commands():
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0 and "antigen_driven" in listing.output and "immunoglobulins" in listing.output
    shown = runner.invoke(app, ["models", "show", "antigen_driven+cytokines"])
    assert shown.exit_code == 0 and "kkill" in shown.output and "Mackensen" in shown.output
    reduced = runner.invoke(app, ["models", "show", "antigen_driven+cytokines_qss"])
    assert reduced.exit_code == 0 and "cytokines_qss holds the states of cytokines at quasi-steady state" in \
        " ".join(reduced.output.split())
    missing = runner.invoke(app, ["models", "show", "nope"])
    assert missing.exit_code == 2 and "unknown model" in missing.output


@pytest.fixture(scope="module")
def adaptive_case():
    from pkpd.simulate.compiled import Design

    model = load("antigen_driven")
    cohort = simulate(model, ["3e7", "3e8", "1e6/kg"], n=4, seed=5, analytes=["transgene", "bcells"])
    design = Design(model, cohort)
    params = draw_parameters(model, len(cohort.subject_ids), np.random.default_rng(11))
    params.index = pd.Index(cohort.subject_ids, name="subject")
    P = np.column_stack([params[p].to_numpy() for p in model.parameter_names])
    return model, cohort, design, params, P


def _lsoda(model, cohort, design, P):
    frame = pd.DataFrame(P, columns=model.parameter_names, index=pd.Index(cohort.subject_ids, name="subject"))
    return predict(model, cohort, frame, rtol=1e-11, atol=1e-14).to_numpy()[design.records]


def test_adaptive_solver_matches_lsoda_on_the_log_scale(adaptive_case):
    from pkpd.simulate.compiled import Tolerances, predict_compiled

    model, cohort, design, _, P = adaptive_case
    exact = _lsoda(model, cohort, design, P)
    for tolerances in (Tolerances(), Tolerances(method="dopri5"), Tolerances(1e-5, 1e-8, method="bs3")):
        n_steps = np.zeros(len(cohort.subject_ids), dtype=np.int64)
        pred, _ = predict_compiled(design, P, [], tolerances, n_steps=n_steps)
        ok = exact > 1e-8
        assert np.all(np.isfinite(pred)) and ok.mean() > 0.9
        assert np.max(np.abs(np.log(pred[ok] / exact[ok]))) < 1e-3, tolerances
        assert np.all(n_steps > 10) and np.all(n_steps < 1000)


def test_adaptive_sensitivities_match_finite_differences(adaptive_case):
    from pkpd.simulate.compiled import Tolerances, predict_compiled

    model, cohort, design, _, P = adaptive_case
    estimated = ["rho", "alpha", "fblood", "b0", "kkill", "kexh"]
    pred, dpred = predict_compiled(design, P, estimated, Tolerances())
    same, _ = predict_compiled(design, P, [], Tolerances())
    # the steps do not depend on the sensitivities (f is computed with them, sharing
    # subexpressions, so the values agree to rounding)
    np.testing.assert_allclose(pred, same, rtol=1e-12)
    _assert_log_sensitivities(model, cohort, design, P, estimated, pred, dpred)


def _assert_log_sensitivities(model, cohort, design, P, estimated, pred, dpred) -> None:
    """d log pred / d log theta of the compiled solver against the (smooth) LSODA solution's
    central differences, for every estimated parameter; each moves some prediction."""
    ok = pred > 1e-3
    eps = 1e-4
    for k, name in enumerate(estimated):
        i = model.parameter_names.index(name)
        up, down = P.copy(), P.copy()
        up[:, i] *= math.exp(eps)
        down[:, i] *= math.exp(-eps)
        fd = (np.log(_lsoda(model, cohort, design, up)[ok]) - np.log(_lsoda(model, cohort, design, down)[ok])) / (2 * eps)
        exact = (dpred[:, k] * P[design.subject_index, i])[ok] / pred[ok]
        assert np.max(np.abs(exact - fd)) < 1e-2, name
        assert np.abs(exact).max() > 1e-3, name


def test_records_interpolated_within_steps_need_fewer_steps_at_the_same_accuracy(adaptive_case):
    # Tolerances(interpolate=True), as virtual patients are solved: the steps land on events and
    # each subject's last record only, the records between are interpolated in the step passing them
    from dataclasses import replace

    from pkpd.simulate.compiled import Tolerances, predict_compiled

    model, cohort, design, _, P = adaptive_case
    exact = _lsoda(model, cohort, design, P)
    ok = exact > 1e-8
    estimated = ["rho", "alpha", "fblood", "b0", "kkill", "kexh"]
    for method in ("cashkarp", "dopri5"):  # the derivative at the step's end computed, or the last stage's
        landed = Tolerances(method=method)
        landed_steps, steps = (np.zeros(len(cohort.subject_ids), dtype=np.int64) for _ in range(2))
        predict_compiled(design, P, [], landed, n_steps=landed_steps)
        pred, dpred = predict_compiled(design, P, estimated, replace(landed, interpolate=True), n_steps=steps)
        assert steps.sum() < 0.85 * landed_steps.sum(), method
        assert np.max(np.abs(np.log(pred[ok] / exact[ok]))) < 2e-3, method
    _assert_log_sensitivities(model, cohort, design, P, estimated, pred, dpred)


def test_adaptive_solver_gives_up_with_nan_instead_of_looping(adaptive_case):
    from pkpd.simulate.compiled import Tolerances, predict_compiled

    _, _, design, _, P = adaptive_case
    pred, dpred = predict_compiled(design, P, ["rho"], Tolerances(max_steps=5))
    after = design.time > 0
    assert np.all(np.isnan(pred[after])) and np.all(np.isnan(dpred[after]))
    assert np.all(np.isfinite(pred[design.time <= 0]))
    with pytest.raises(ValueError, match="method"):
        Tolerances(method="rk45")


def test_sampler_op_runs_the_adaptive_solver(adaptive_case):
    from pkpd.fit.op import Predictions
    from pkpd.simulate.compiled import Tolerances

    model, _, design, _, P = adaptive_case
    estimated = ["rho", "b0"]
    predictions = Predictions(design, estimated, P, Tolerances())
    log_theta = np.log(P[:, [model.parameter_names.index(n) for n in estimated]])
    pred, jac = predictions.values(log_theta)
    pred2, jac2 = predictions.compiled()(log_theta)
    # the same kernel compiled twice (inlined differently): equal up to rounding, which
    # sensitivities that cross zero amplify
    np.testing.assert_allclose(pred2, pred, rtol=1e-12)
    np.testing.assert_allclose(jac2, jac, rtol=1e-9, atol=1e-12 * np.abs(jac).max())


def test_a_design_subset_and_the_threaded_kernel_give_the_same_predictions(adaptive_case, monkeypatch):
    """Design.subset (virtual patients share their donors' designs; repeats allowed) predicts
    each selected subject exactly as the full design does; subjects split over threads give the
    same predictions and sensitivities as one call."""
    from pkpd.simulate import compiled
    from pkpd.simulate.compiled import predict_compiled

    model, cohort, design, _, P = adaptive_case
    full, dfull = predict_compiled(design, P, ["rho", "b0"])
    index = np.array([3, 0, 3, 11, 5, 5])
    part = design.subset(index)
    pred, dpred = predict_compiled(part, P[index], ["rho", "b0"])
    rows = np.concatenate([np.arange(design.start[i], design.start[i + 1]) for i in index])
    np.testing.assert_array_equal(pred, full[rows])
    np.testing.assert_array_equal(dpred, dfull[rows])
    assert part.subjects[0] == f"0:{cohort.subject_ids[3]}" and len(part.subjects) == len(index)
    # the record arrays the solver does not read are selected when first read, and read-only
    for name in ("records", "data_time", "value", "lloq", "censored"):
        assert name not in vars(part)
        np.testing.assert_array_equal(getattr(part, name), getattr(design, name)[rows])
        assert not getattr(part, name).flags.writeable
    twice = part.subset(np.array([2, 0]))
    np.testing.assert_array_equal(twice.value, design.value[np.concatenate(
        [np.arange(design.start[i], design.start[i + 1]) for i in index[[2, 0]]])])
    assert np.array_equal(part.schedule.amount[part.schedule.start[3]:part.schedule.start[4]],
                          design.schedule.amount[design.schedule.start[11]:design.schedule.start[12]])
    monkeypatch.setattr(compiled, "SUBJECTS_PER_THREAD", 1)
    monkeypatch.setattr(compiled.os, "cpu_count", lambda: 3)
    threaded, dthreaded = predict_compiled(design, P, ["rho", "b0"])
    np.testing.assert_array_equal(threaded, full)
    np.testing.assert_array_equal(dthreaded, dfull)


def test_sensitivities_of_a_composed_model_match_finite_differences():
    """On the composed demo model, parameters acting upstream (rho, b0), on one state (igg0), on
    the short-lived plasma cells (kkillsl) or only in an observation function (emax_il6) all get
    the derivatives of LSODA's central differences."""
    from pkpd.simulate.compiled import Design, Tolerances, predict_compiled

    model = load("antigen_driven+cytokines_qss+igg")
    cohort = simulate(model, ["3e8", "1e6/kg"], n=2, seed=3, analytes=["transgene", "bcells", "il6", "igg"])
    design = Design(model, cohort)
    params = draw_parameters(model, len(cohort.subject_ids), np.random.default_rng(4))
    params.index = pd.Index(cohort.subject_ids, name="subject")
    P = np.column_stack([params[p].to_numpy() for p in model.parameter_names])
    estimated = ["rho", "b0", "igg0", "kkillsl", "emax_il6"]
    pred, dpred = predict_compiled(design, P, estimated, Tolerances())
    _assert_log_sensitivities(model, cohort, design, P, estimated, pred, dpred)


def test_sensitivity_pattern_follows_the_equations():
    """The kernels carry only the sensitivities that can be nonzero: a parameter reaches a state
    through its equation, its initial value or a dose into it, then every state reading it."""
    from pkpd.models.compiled import sensitivity_pattern

    model = load("antigen_driven+cytokines_qss+immunoglobulins")
    pattern = pd.DataFrame(sensitivity_pattern(model), index=model.states, columns=model.parameter_names)
    assert not pattern[["base_il6", "emax_il6", "emax_ifng"]].any().any()  # quasi-steady state: observed only
    assert pattern["igg0"].sum() == 1 and pattern.loc["igg", "igg0"]  # a baseline acts on its own state
    assert pattern["rho"].all()  # CAR-T expansion reaches B cells, plasma cells and antibodies
    assert pattern["fblood"].all()  # through the infusion's bioavailability into the effector state
    assert not pattern.loc[["E", "M", "B"], "kkillll"].any()  # long-lived plasma cells act downstream only
