"""Doses as events with NONMEM's meaning, checked against closed-form solutions.

A user's one-compartment model file (tests/models/oral_1cpt.py, hours and mg) and datasets
written as a data manager would: repeated oral doses (II/ADDL), an IV infusion by duration and
one by rate, a dose at steady state (SS=1), a reset (EVID 3), doses named by CMT number and by
state name. The compiled kernel (with its sensitivities) and the LSODA reference must both
match the superposition of one-compartment solutions.
"""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pkpd.data import read_cohort
from pkpd.models import ModelError, load
from pkpd.simulate.compiled import Tolerances, predict_compiled
from pkpd.simulate.design import Design
from pkpd.simulate.solve import predict_reference

MODELS = Path(__file__).parent / "models"
TIMES = [-1, 0, 0.5, 1, 1.5, 2, 3, 5, 8, 12, 13, 14, 20, 24, 25, 26, 28, 30, 31, 36, 37, 40, 48, 60]
TIGHT = Tolerances(rtol=1e-8, atol=1e-12)

# subject 1: oral 100 mg at 0 and 12 h (CMT 1 and the state's name); 2: oral 100 mg q12h (ADDL 3);
# 3: IV 50 mg over 2 h (CMT 2, DUR) and 100 mg at 25 mg/h from 24 h (CMT central, RATE);
# 4: oral 100 mg q12h at steady state at 0 (SS=1), a reset at 30 h, a dose at 36 h
DOSES = """\
1,0,100,1,.,.,.,.,.,1
1,12,100,depot,.,.,.,.,.,1
2,0,100,.,.,.,12,3,.,1
3,0,50,2,.,2,.,.,.,1
3,24,100,central,25,.,.,.,.,1
4,0,100,.,.,.,12,.,1,1
4,36,100,.,.,.,.,.,.,1
"""


def write_dataset(tmp_path) -> Path:
    rows = ["ID,TIME,TIMEU,AMT,AMTU,CMT,RATE,DUR,II,ADDL,SS,EVID,DV,MDV,ANALYTE,UNIT"]
    for line in DOSES.splitlines():
        i, t, amt, cmt, rate, dur, ii, addl, ss, evid = line.split(",")
        rows.append(f"{i},{t},HOURS,{amt},mg,{cmt},{rate},{dur},{ii},{addl},{ss},{evid},.,1,.,.")
    rows.append("4,30,HOURS,0,.,.,.,.,.,.,.,3,.,1,.,.")
    for i in range(1, 5):
        rows += [f"{i},{t},HOURS,0,.,.,.,.,.,.,.,0,1.0,0,conc,mg/L" for t in TIMES]
    path = tmp_path / "pk.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def oral(t, dose, at, ka, cl, v, tlag, f):
    tt = np.asarray(t, float) - at - tlag
    ke = cl / v
    return np.where(tt > 0, f * dose * ka / (v * (ka - ke)) * (np.exp(-ke * np.maximum(tt, 0)) - np.exp(-ka * np.maximum(tt, 0))), 0.0)


def infusion(t, dose, at, duration, cl, v):
    tt = np.asarray(t, float) - at
    ke, rate = cl / v, dose / duration
    during = rate / (ke * v) * (1 - np.exp(-ke * np.clip(tt, 0, duration)))
    return np.where(tt <= 0, 0.0, np.where(tt < duration, during, during * np.exp(-ke * np.maximum(tt - duration, 0))))


def exact(subject, params):
    ka, cl, v, tlag, f = params
    t = np.array(TIMES, float)
    if subject == 1:
        return oral(t, 100, 0, *params) + oral(t, 100, 12, *params)
    if subject == 2:
        return sum(oral(t, 100, 12 * k, *params) for k in range(4))
    if subject == 3:
        return infusion(t, 50, 0, 2, cl, v) + infusion(t, 100, 24, 4, cl, v)
    # steady state before the dose at 0 (doses at 0, -12, -24, ...; none before the first record)
    ss = sum(oral(t, 100, -12 * k, *params) for k in range(3000))
    return np.where(t < 0, 0.0, np.where(t < 30, ss, 0.0) + oral(t, 100, 36, *params))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = load(str(MODELS / "oral_1cpt.py"))
    cohort = read_cohort(write_dataset(tmp_path_factory.mktemp("events")))
    design = Design(model, cohort)
    P = np.tile([p.typical for p in model.parameters], (4, 1))
    return model, cohort, design, P


def test_the_dataset_reads_with_its_dosing_columns(case):
    _, cohort, design, _ = case
    assert cohort.time_unit == "h" and len(cohort.doses) == 7 and len(cohort.dose_records()) == 10
    kinds = design.schedule.events_of(3)["kind"].tolist()
    assert kinds == ["steady state", "bolus", "reset", "bolus"]
    assert design.schedule.events_of(2)["kind"].tolist() == ["infusion (duration)", "infusion (rate)"]


@pytest.mark.parametrize("solver", ["compiled", "compiled, records interpolated", "reference"])
def test_predictions_match_the_closed_form(case, solver):
    model, _, design, P = case
    if solver.startswith("compiled"):
        pred, _ = predict_compiled(design, P, [], replace(TIGHT, interpolate="interpolated" in solver))
    else:
        pred = predict_reference(design, P.T, rtol=1e-10, atol=1e-14)
    for i in range(4):
        mine = design.subject_index == i
        np.testing.assert_allclose(pred[mine], exact(i + 1, P[i]), rtol=1e-6, atol=1e-7, err_msg=f"subject {i + 1}")


@pytest.mark.parametrize("interpolate", [False, True])
def test_sensitivities_cross_every_event_exactly(case, interpolate):
    """d pred / d theta of the kernel (lag, bioavailability, steady state, infusions) against
    central differences of the closed form; also with the records between events interpolated."""
    model, _, design, P = case
    _, dpred = predict_compiled(design, P, model.parameter_names, replace(TIGHT, interpolate=interpolate))
    for k, name in enumerate(model.parameter_names):
        for i in range(4):
            h = 1e-6 * P[i, k]
            up, down = P[i].copy(), P[i].copy()
            up[k] += h
            down[k] -= h
            fd = (exact(i + 1, up) - exact(i + 1, down)) / (2 * h)
            mine = design.subject_index == i
            scale = max(1.0, np.abs(fd).max())
            np.testing.assert_allclose(dpred[mine, k], fd, atol=2e-5 * scale, err_msg=f"{name}, subject {i + 1}")


def test_a_time_varying_covariate_is_a_step_function(tmp_path):
    """TOCI switched on at day 2 and off at day 5 (EVID 2 rows) halves the elimination rate
    in between: the level is exp(-k t) piecewise."""
    model = load(str(MODELS / "toci_clearance.py"))
    text = ("ID,TIME,TIMEU,AMT,AMTU,EVID,MDV,DV,ANALYTE,UNIT,TOCI\n1,0,DAYS,10,mg,1,1,.,.,.,0\n"
            "1,2,DAYS,0,.,2,1,.,.,.,1\n1,5,DAYS,0,.,2,1,.,.,.,0\n"
            + "".join(f"1,{t},DAYS,0,.,0,0,1,level,mg,.\n" for t in (1, 2, 3, 5, 6, 8)))
    (tmp_path / "toci.csv").write_text(text)
    cohort = read_cohort(tmp_path / "toci.csv")
    design = Design(model, cohort)
    k = model.parameter("k").typical
    t = np.array([1, 2, 3, 5, 6, 8.0])
    rate = np.where(t <= 2, k * t, np.where(t <= 5, 2 * k + 0.5 * k * (t - 2), 2 * k + 1.5 * k + k * (t - 5)))
    P = np.array([[k]])
    compiled, dpred = predict_compiled(design, P, ["k"], TIGHT)
    reference = predict_reference(design, P.T, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(compiled, 10 * np.exp(-rate), rtol=1e-7)
    np.testing.assert_allclose(reference, 10 * np.exp(-rate), rtol=1e-7)
    np.testing.assert_allclose(dpred[:, 0], -10 * np.exp(-rate) * rate / k, rtol=1e-6)


def test_a_cohort_in_days_is_converted_to_the_models_hours(case, tmp_path):
    model, _, design, P = case
    text = "ID,TIME,AMT,EVID,DV,MDV,ANALYTE,UNIT\n1,0,100,1,.,1,.,.\n" + "".join(
        f"1,{t / 24},0,0,1,0,conc,mg/L\n" for t in (1, 2, 5, 12))
    (tmp_path / "days.csv").write_text(text)
    cohort = read_cohort(tmp_path / "days.csv", time_unit="d", dose_unit="mg")
    pred, _ = predict_compiled(Design(model, cohort), P[:1], [], TIGHT)
    expected = oral(np.array([1, 2, 5, 12.0]), 100, 0, *P[0])
    np.testing.assert_allclose(pred, expected, rtol=1e-6)


def test_doses_the_model_cannot_take_are_clear_errors(case, tmp_path):
    model, cohort, _, _ = case
    bad_cmt = cohort.doses.assign(cmt=["9"] + list(cohort.doses["cmt"].iloc[1:]))
    with pytest.raises(ModelError, match="CMT 9, but model oral_1cpt has 2 states"):
        Design(model, cohort.__class__(**{**cohort.__dict__, "doses": bad_cmt}))
    cells = cohort.doses.assign(absolute_unit="cells", unit="cells")
    with pytest.raises(ModelError, match="cannot be converted to mg"):
        Design(model, cohort.__class__(**{**cohort.__dict__, "doses": cells}))
    with pytest.raises(ModelError, match="takes a single dose at t = 0"):
        Design(load("multiphasic"), cohort.__class__(**{**cohort.__dict__, "doses": cells}))


def test_the_car_t_infusion_is_a_dose_event_with_the_same_predictions():
    """antigen_driven takes its infusion as a bolus into E with bioavailability
    fblood*(1 + (eld - 1)*LD)/5e6: the same E(0) as the former initial condition."""
    from pkpd.simulate import covariate_matrix, parameter_matrix, solve

    model = load("antigen_driven")
    P = parameter_matrix(model, None, 1)
    C = covariate_matrix(1, dose=7e7, ld=1, weight=70)
    values = solve(model, [0.0], P, C).values
    fblood, eld, scale = (model.parameter(n).typical for n in ("fblood", "eld", "scale"))
    assert values["transgene"][0, 0] == pytest.approx(scale * fblood * eld * 7e7 / 5e6, rel=1e-12)
    assert math.isclose(values["bcells"][0, 0], model.parameter("b0").typical)
