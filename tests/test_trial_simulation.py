"""The model-based trial simulator and the toxicity model (pkpd.trial.simulation, .toxicity)."""

import math
from dataclasses import replace

import numpy as np
import pytest
from pkpd.trial import BOIN, ThreePlusThree, ToxicityModel, operating_characteristics, simulate_trials
from pkpd.trial.output import read_trial, write_trial
from tests.test_dose import synthetic_run


def constant_toxicity(p: float) -> ToxicityModel:
    """P(DLT) = p whatever the exposure: one grade, no slope, no background."""
    return ToxicityModel(event="DLT", analyte="transgene", metric="cmax", reference=1e4, unit="copies/ug",
                         intercepts=((math.log(p / (1 - p)), 1e-9),), slope=(0.0, 1e-9), dlt_grade=1,
                         background=(1e-6, 1e6))


def test_the_toxicity_model_orders_grades_and_rises_with_exposure():
    model = ToxicityModel()
    parameters = model.draw(500, np.random.default_rng(1))
    assert np.all(np.diff(parameters["intercepts"], axis=1) < 0)
    signal = np.tile([3.0, 30.0, 300.0], (500, 1))                 # (draws, patients)
    grades = model.grade_probabilities(signal, parameters)         # (draws, patients, grades)
    assert grades.shape == (500, 3, 3)
    assert np.all(np.diff(grades, axis=2) <= 0)                     # P(>= 1) >= P(>= 2) >= P(>= 3)
    mean = grades.mean(0)
    assert np.all(np.diff(mean, axis=0) > 0)                        # higher peak IL-6, more CRS
    # at the reference the prior medians: about 2/3 any CRS, 7% grade >= 2, 1% grade >= 3
    assert np.median(grades[:, 1, :], axis=0) == pytest.approx([0.668, 0.069, 0.010], abs=0.03)
    dlt = model.dlt_probability(signal, parameters)
    assert np.all(dlt >= grades[..., 2])
    assert "at their priors" in model.describe()
    with pytest.raises(ValueError, match="decreasing means"):
        ToxicityModel(intercepts=((-1.0, 0.5), (0.0, 0.5)))
    with pytest.raises(ValueError, match="dlt_grade"):
        ToxicityModel(dlt_grade=4)


def test_with_a_constant_dlt_probability_the_simulator_reproduces_the_design_alone():
    """The model-based simulation with P(DLT) = 0.25 at every dose must give the operating
    characteristics of the design run on fixed probabilities (same rules, same chances)."""
    run = synthetic_run(draws=20)
    design = BOIN(target=0.3, max_n=12)
    simulation = simulate_trials(run, design, ["1e8", "3e8", "6e8"], toxicity=constant_toxicity(0.25), trials=3000,
                                 seed=2, draws=20, expansion=3)
    fixed = operating_characteristics(design, [0.25, 0.25, 0.25], trials=20000, seed=3)
    model = simulation.oc.set_index("dose")
    for k, dose in enumerate(["1e8", "3e8", "6e8", "none"]):
        a, b = model.loc[dose], fixed.table.iloc[k]
        assert abs(a["p_select"] - b["p_select"]) < 4 * math.hypot(a["se_select"], b["se_select"]) + 1e-3, dose
        if dose != "none":
            assert abs(a["mean_n"] - b["mean_n"]) < 4 * math.hypot(a["se_n"], b["se_n"]) + 1e-3
            assert a["p_dlt_model"] == pytest.approx(0.25, abs=1e-3)
    summary = simulation.summary.iloc[0]
    assert abs(summary["mean_n"] - fixed.mean_n) < 4 * math.hypot(summary["se_n"], fixed.se_mean_n) + 1e-3
    assert abs(summary["p_stop_early"] - fixed.p_stop_early) < 0.03
    assert summary["expansion_dlt_rate"] == pytest.approx(0.25, abs=0.03)
    # 4 cohorts: each at least its window after it starts, the first patient of a new dose observed 14 days
    assert summary["mean_duration_d"] > 4 * 28 + 14


def test_a_simulation_writes_reads_back_and_refuses_bad_settings(tmp_path):
    run = synthetic_run(draws=20)
    simulation = simulate_trials(run, ThreePlusThree(), ["1e8", "3e8"], toxicity=constant_toxicity(0.1), trials=50,
                                 seed=1, draws=20)
    write_trial(simulation, tmp_path / "trial")
    back = read_trial(tmp_path / "trial")
    assert back.oc.shape == simulation.oc.shape and back.settings["trials"] == 50
    (tmp_path / "trial" / "oc.csv").write_text("design\nx\n")
    with pytest.raises(ValueError, match="missing column"):
        read_trial(tmp_path / "trial")
    with pytest.raises(ValueError, match="lowest first"):
        simulate_trials(run, BOIN(), ["3e8", "1e8"], toxicity=constant_toxicity(0.1), trials=10, draws=20)
    with pytest.raises(ValueError, match="not among the fitted analytes"):
        simulate_trials(run, BOIN(), ["1e8", "3e8"], trials=10, draws=20)   # the default signal is IL-6
    with pytest.raises(TypeError, match="pkpd.trial design"):
        simulate_trials(run, "boin", ["1e8", "3e8"], toxicity=constant_toxicity(0.1), trials=10, draws=20)


def test_the_dask_path_gives_the_same_trials():
    from distributed import Client

    run = synthetic_run(draws=20)
    settings = dict(toxicity=constant_toxicity(0.2), trials=40, seed=5, draws=20)
    local = simulate_trials(run, BOIN(max_n=9), ["1e8", "3e8"], **settings)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        distributed = simulate_trials(run, BOIN(max_n=9), ["1e8", "3e8"], client=client, **settings)
    assert local.oc.equals(distributed.oc) and local.summary.equals(distributed.summary)


def test_a_time_to_event_design_runs_on_the_fit_as_on_fixed_probabilities_and_shortens_the_trial():
    from pkpd.trial import CRM

    run = synthetic_run(draws=20)
    tox = ToxicityModel(**{**constant_toxicity(0.2).__dict__, "onset_days": (0.0, 28.0)})
    design = CRM(target=0.3, cohort_size=1, max_n=12, tite=True)
    simulation = simulate_trials(run, design, ["1e8", "3e8", "6e8"], toxicity=tox, trials=1200, seed=4, draws=20,
                                 expansion=0, accrual_per_month=3.0)
    fixed = operating_characteristics(design, [0.2, 0.2, 0.2], trials=3000, seed=5, accrual_per_month=3.0)
    model = simulation.oc.set_index("dose")
    for k, dose in enumerate(["1e8", "3e8", "6e8"]):
        a, b = model.loc[dose], fixed.table.iloc[k]
        assert abs(a["p_select"] - b["p_select"]) < 4 * math.hypot(a["se_select"], b["se_select"]) + 1e-3, dose
    cohorts = simulate_trials(run, CRM(target=0.3, cohort_size=1, max_n=12), ["1e8", "3e8", "6e8"], toxicity=tox,
                              trials=200, seed=4, draws=20, expansion=0, accrual_per_month=3.0)
    # without waiting for each window: about 12 entries at 3 a month plus one window, against 12 windows
    assert simulation.summary["mean_duration_d"].iloc[0] < 0.5 * cohorts.summary["mean_duration_d"].iloc[0]


TRUE_INTERCEPTS, TRUE_SLOPE = (0.6, -1.2, -2.8), 2.5


def cohort_with_crs_grades(tmp_path, n=80, seed=3):
    """Simulated subjects (multiphasic, transgene) with CRS grades drawn from the cumulative logit
    of their measured transgene Cmax, written as DVID-13 records of a NONMEM file and read back."""
    import pandas as pd

    from pkpd.data import read_cohort, write_nonmem
    from pkpd.models import load
    from pkpd.nca import nca
    from pkpd.simulate import simulate

    cohort = simulate(load("multiphasic"), ["3e8"], n=n, seed=seed)
    path = write_nonmem(cohort, tmp_path / "pk.csv")
    cmax = nca(cohort, ["transgene"]).set_index("subject")["cmax"]
    reference = float(cmax.median())
    rng = np.random.default_rng(seed)
    x = np.log10(cmax.to_numpy() / reference)
    p = 1 / (1 + np.exp(-(np.array(TRUE_INTERCEPTS)[None, :] + TRUE_SLOPE * x[:, None])))   # P(grade >= g)
    grade = (rng.random(len(x))[:, None] < p).sum(1)      # P(>= g) nested: grade = number of thresholds passed
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    first = frame.groupby("ID").head(1).copy()
    ids = first["ID"].tolist()
    assert len(ids) == len(grade)
    first = first.assign(TIME="3", NTIME="3", AMT="0", DV=[str(g) for g in grade], MDV="0", EVID="0", CMT="13",
                         DVID="13", ANALYTE="crs", UNIT="grade", CENS="0", LLOQ=".")
    with_grades = pd.concat([frame, first], ignore_index=True)
    with_grades.to_csv(tmp_path / "pk_crs.csv", index=False)
    return read_cohort(tmp_path / "pk_crs.csv"), reference, grade


def test_the_toxicity_model_is_fitted_to_graded_records_and_recovers_the_truth(tmp_path):
    from pkpd.trial.toxicity_fit import fit_toxicity, toxicity_data

    from pkpd.data import check_file, read_cohort, write_adam

    cohort, reference, grade = cohort_with_crs_grades(tmp_path)
    assert cohort.analytes["crs"].kind == "adverse_event"
    # the same records through the ADaM writer and reader (PARAMCD CRSGR, AVALU grade)
    back = read_cohort(write_adam(cohort, tmp_path / "adam.csv"))
    assert np.array_equal(back.observations.query("analyte == 'crs'")["value"],
                          cohort.observations.query("analyte == 'crs'")["value"])
    # a grade that is not a whole number 0-5 is a located error
    text = (tmp_path / "pk_crs.csv").read_text().splitlines()
    last = text[-1].split(",")
    header = text[0].split(",")
    last[header.index("DV")] = "2.5"
    (tmp_path / "bad.csv").write_text("\n".join(text[:-1] + [",".join(last)]) + "\n")
    report = check_file(tmp_path / "bad.csv").report
    assert any(f.rule == "adverse-event-grade" and f.column == "DV" for f in report.errors)
    prior = ToxicityModel(analyte="transgene", metric="cmax", reference=reference, unit="copies/ug",
                          intercepts=((0.0, 1.5), (-2.0, 1.5), (-4.0, 1.5)), slope=(1.0, 2.0))
    data, notes = toxicity_data(prior, cohort)
    assert len(data) == 80 and notes == [] and np.array_equal(np.sort(data["grade"]), np.sort(grade))
    fitted = fit_toxicity(prior, cohort, seed=1)
    assert fitted.fitted and fitted.converged, fitted.summary
    slope = fitted.posterior["slope"]
    assert np.quantile(slope, 0.025) < TRUE_SLOPE < np.quantile(slope, 0.975), np.quantile(slope, [0.025, 0.975])
    for g, truth in enumerate(TRUE_INTERCEPTS):
        a = fitted.posterior["intercepts"][:, g]
        assert np.quantile(a, 0.025) < truth < np.quantile(a, 0.975), (g, np.quantile(a, [0.025, 0.975]))
    assert "fitted to 80 subjects" in fitted.describe()
    # the simulator fits it by itself when the fitted cohort carries the records, and says so
    run = synthetic_run(draws=20)
    simulation = simulate_trials(run, BOIN(max_n=6), ["1e8", "3e8"], toxicity=prior, trials=20, draws=20,
                                 events=cohort)
    assert simulation.settings["toxicity_fitted"] and "fitted to 80 subjects" in simulation.settings["toxicity"]
    # the signal's unit is the data's, whatever the model was declared with
    unit_free = simulate_trials(run, BOIN(max_n=6), ["1e8", "3e8"], toxicity=replace(prior, unit="pg/mL"), trials=10,
                                draws=20)
    assert "transgene cmax (copies/ug)" in unit_free.settings["toxicity"]


def test_the_toxicity_model_fitted_to_other_records_loads_its_sampler_from_the_cache():
    """The adverse-event records are the sampler's data, not constants compiled into it: a trial
    simulated on a new cohort's records does not compile the toxicity model again."""
    from pkpd.fit.compile import FROM_CACHE, compile_model
    from pkpd.trial.toxicity_fit import ordered_logistic

    rng = np.random.default_rng(4)
    settings = (np.array([0.0, -2.0]), np.array([1.5, 1.5]), (1.0, 2.0))
    first = (*settings, rng.normal(size=30), rng.integers(0, 3, 30))
    compile_model(ordered_logistic(*first), (ordered_logistic, first))
    other = (*settings, rng.normal(size=47), rng.integers(0, 3, 47))
    _, origin = compile_model(ordered_logistic(*other), (ordered_logistic, other))
    assert origin == FROM_CACHE
