"""Dose-escalation designs (pkpd.trial): published boundaries and decision tables, closed-form
operating characteristics of the 3+3, and the engine's Monte Carlo error."""

import math

import numpy as np
import pytest
from scipy import integrate
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.trial import BOIN, CRM, MTPI2, ThreePlusThree, boin_boundaries, operating_characteristics, skeleton
from pkpd.trial.crm import _moments
from pkpd.trial.oc import run_trial


def test_boin_boundaries_and_decision_table_for_a_target_of_0_3():
    # Liu S, Yuan Y. J R Stat Soc C 2015;64:507, Table 1: lambda_e 0.236, lambda_d 0.358 for phi 0.3
    lambda_e, lambda_d = boin_boundaries(0.3)
    assert round(lambda_e, 3) == 0.236 and math.floor(lambda_d * 1000) == 358
    # the decision table for target 0.3 and up to 12 patients (Yuan Y, Hess KR, Hilsenbeck SG,
    # Gilbert MR. Clin Cancer Res 2016;22:4291, Table 1; R package BOIN get.boundary)
    table = BOIN(target=0.3, max_n=12).decision_table()
    assert table["escalate_if_le"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert table["deescalate_if_ge"].tolist() == [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5]
    assert table["eliminate_if_ge"].tolist()[2:] == [3, 3, 4, 4, 5, 5, 5, 6, 6, 7]
    assert table["eliminate_if_ge"].isna().tolist()[:2] == [True, True]


def test_boin_boundaries_follow_the_closed_form_for_other_targets():
    for target in (0.2, 0.25, 0.33):
        lambda_e, lambda_d = boin_boundaries(target)
        phi_1, phi_2 = 0.6 * target, 1.4 * target
        # lambda_e is where the likelihoods of phi_1 and target are equal for one patient's rate
        equal = lambda x, a, b: x * math.log(a / b) + (1 - x) * math.log((1 - a) / (1 - b))
        assert abs(equal(lambda_e, phi_1, target)) < 1e-12 and abs(equal(lambda_d, target, phi_2)) < 1e-12
        assert phi_1 < lambda_e < target < lambda_d < phi_2


def _three_plus_three_two_doses(p1, p2):
    """Selection probabilities of the 3+3 with de-escalation on two doses, by hand."""
    b0 = lambda p: (1 - p) ** 3
    b1 = lambda p: 3 * p * (1 - p) ** 2
    top_tolerated = b0(p2) + b1(p2) * b0(p2)                        # 0/3, or 1/3 then 0/3
    to_dose_2_with_3 = b0(p1)                                       # 0/3 at dose 1
    to_dose_2_with_6 = b1(p1) * b0(p1)                              # 1/3 then 0/3
    select_2 = (to_dose_2_with_3 + to_dose_2_with_6) * top_tolerated
    select_1 = (1 - top_tolerated) * (to_dose_2_with_3 * (b0(p1) + b1(p1)) + to_dose_2_with_6)
    return np.array([select_1, select_2, 1 - select_1 - select_2])


@pytest.mark.parametrize("tox", [(0.1, 0.3), (0.25, 0.5), (0.05, 0.15)])
def test_three_plus_three_matches_its_closed_form(tox):
    oc = operating_characteristics(ThreePlusThree(), tox, trials=20000, seed=4)
    exact = _three_plus_three_two_doses(*tox)
    assert np.all(np.abs(oc.table["p_select"].to_numpy() - exact) < 4 * oc.table["se_select"].to_numpy() + 1e-3)


def test_three_plus_three_escalates_from_a_dose_with_the_textbook_probability():
    # P(escalate past a dose with DLT probability p) = (1-p)^3 + 3p(1-p)^5 (Storer 1989): at the
    # first of 3 doses it is the probability that the trial treats dose 2 at all
    p = 0.3
    rng = np.random.default_rng(5)
    reached = np.mean([run_trial(ThreePlusThree(), [p, 0.35, 0.4], rng).n[1] > 0 for _ in range(20000)])
    exact = (1 - p) ** 3 + 3 * p * (1 - p) ** 5
    assert abs(reached - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000)
    assert round(exact, 3) == 0.494


def test_three_plus_three_reproduces_published_exact_operating_characteristics():
    # Wheeler GM, Sweeting MJ, Mander AP. PLoS One 2016;11:e0159026 (exact A+B calculations, their
    # AplusB application): 5 doses with DLT probabilities 0.1-0.5, de-escalation allowed:
    # P(no dose, dose 1..5 recommended) = 0.10, 0.28, 0.33, 0.20, 0.06, 0.02 (two decimals)
    oc = operating_characteristics(ThreePlusThree(), [0.1, 0.2, 0.3, 0.4, 0.5], trials=40000, seed=6)
    simulated = oc.table["p_select"].to_numpy()
    published = np.array([0.28, 0.33, 0.20, 0.06, 0.02, 0.10])   # doses 1-5, then none
    assert np.all(np.abs(simulated - published) < 0.005 + 4 * oc.table["se_select"].to_numpy()), simulated


def test_three_plus_three_never_exceeds_six_per_dose_and_selects_a_tolerated_dose():
    rng = np.random.default_rng(1)
    for _ in range(500):
        outcome = run_trial(ThreePlusThree(), [0.1, 0.2, 0.3, 0.5], rng)
        assert outcome.n.max() <= 6 and np.all(outcome.n % 3 == 0)
        if outcome.selected >= 0:
            assert outcome.y[outcome.selected] <= outcome.n[outcome.selected] // 6


def test_mtpi2_decisions_for_three_and_six_patients():
    # Guo W, Wang S-J, Yang S, Lynn H, Ji Y. Contemp Clin Trials 2017;58:23: target 0.3,
    # epsilon 0.05; DU = de-escalate and eliminate (P(p > 0.3) > 0.95)
    table = MTPI2(target=0.3, max_n=6).decision_table()
    row = lambda n: table[table.n == n]["decision"].tolist()
    assert row(3) == ["E", "S", "D", "DU"]
    assert row(6) == ["E", "E", "S", "D", "DU", "DU", "DU"]


def test_crm_skeleton_and_posterior():
    s = skeleton(0.25, 5, prior_mtd=2, halfwidth=0.05)
    # Cheung's R package dfcrm 0.2-2.1, getprior(0.05, 0.25, 3, 5), run side by side
    np.testing.assert_allclose(s, [0.08397349131, 0.15674102114, 0.25, 0.35450042762, 0.46034311109], rtol=1e-9)
    # neighbours' indifference intervals meet: where dose d sits at target - 0.05, dose d+1 at + 0.05
    for d in range(4):
        power = math.log(0.20) / math.log(s[d])
        assert s[d + 1] ** power == pytest.approx(0.30)
    crm = CRM(target=0.25, skeleton=tuple(s))
    n, y = np.array([3, 6, 3, 0, 0]), np.array([0, 1, 2, 0, 0])
    mean, above = crm.posterior(n, y)
    # against scipy's adaptive quadrature of the same posterior
    like = lambda a: math.exp(-a * a / (2 * 1.34)) * np.prod((s ** math.exp(a)) ** y * (1 - s ** math.exp(a)) ** (n - y))
    norm = integrate.quad(like, -12, 12)[0]
    for d in range(5):
        expected = integrate.quad(lambda a: like(a) * s[d] ** math.exp(a), -12, 12)[0] / norm
        assert mean[d] == pytest.approx(expected, abs=1e-6)


def test_crm_posterior_reproduces_cheungs_worked_example():
    # Cheung YK, Dose Finding by the Continual Reassessment Method, CRC 2011, p. 21: skeleton
    # 0.05-0.55, target 0.25, patients at levels 3, 5, 5, 3, 4 with one DLT (the second at
    # level 5); empiric model, a ~ N(0, 1.34): posterior mean of a 0.504, variance 0.317 (dfcrm
    # 0.2-2.1 crm(), run side by side: 0.5043536224 and 0.3165863158); dose 4 recommended
    crm = CRM(target=0.25, skeleton=(0.05, 0.12, 0.25, 0.40, 0.55))
    n, y = np.array([0, 0, 2, 1, 2]), np.array([0, 0, 0, 0, 1])
    mean, variance = crm.posterior_a(n, y)
    assert mean == pytest.approx(0.5043536224, abs=1e-6) and variance == pytest.approx(0.3165863158, abs=1e-6)
    plug_in = np.array(crm.skeleton) ** math.exp(mean)
    np.testing.assert_allclose(plug_in, [0.00701, 0.0299, 0.101, 0.219, 0.372], rtol=3e-3)
    assert int(np.argmin(np.abs(plug_in - 0.25))) == 3


def test_tite_crm_posterior_matches_dfcrm_titecrm():
    # dfcrm 0.2-2.1, titecrm() help example, run side by side: skeleton 0.05-0.70, target 0.2,
    # ten patients with follow-up u of a 180-day window (linear weights u/180, 1 after a DLT):
    # posterior mean of a -0.1327865514, variance 0.1954901478, dose level 3 recommended
    crm = CRM(target=0.2, skeleton=(0.05, 0.10, 0.20, 0.35, 0.50, 0.70), cohort_size=1, tite=True)
    level = np.array([3, 3, 3, 4, 4, 3, 2, 2, 2, 3]) - 1
    dlt = np.array([0, 0, 1, 0, 1, 0, 0, 0, 0, 0], bool)
    followed = np.array([178, 181, 168, 181, 24, 181, 179, 102, 42, 3])
    weight = np.where(dlt, 1.0, np.minimum(followed / 180, 1.0))
    grid, p = crm.patient_posterior(level, dlt, weight, 6)
    mean, variance = _moments(grid)
    assert mean == pytest.approx(-0.1327865514, abs=1e-6) and variance == pytest.approx(0.1954901478, abs=1e-6)
    assert int(np.argmin(np.abs(np.array(crm.skeleton) ** math.exp(mean) - 0.2))) == 2
    # with every window complete the TITE posterior is the CRM's
    n, y = np.bincount(level, minlength=6), np.bincount(level, weights=dlt, minlength=6)
    complete, _ = crm.patient_posterior(level, dlt, np.ones(10), 6)
    np.testing.assert_allclose(complete, crm._weights(n, y)[0], atol=1e-12)


def test_tite_crm_with_slow_accrual_behaves_as_the_crm():
    # one patient every 2 months: every window (28 days) is complete when the next patient enters
    tox = [0.05, 0.15, 0.3, 0.45, 0.6]
    tite = operating_characteristics(CRM(cohort_size=1, max_n=18, tite=True), tox, trials=1500, seed=8,
                                     accrual_per_month=0.25)
    crm = operating_characteristics(CRM(cohort_size=1, max_n=18), tox, trials=1500, seed=9)
    a, b = tite.table, crm.table
    assert np.all(np.abs(a["p_select"] - b["p_select"]) < 4 * np.hypot(a["se_select"], b["se_select"]) + 1e-3)
    with pytest.raises(ValueError, match="one at a time"):
        CRM(tite=True, cohort_size=3)


def test_every_design_finds_the_mtd_and_stops_when_every_dose_is_too_toxic():
    tox = [0.05, 0.12, 0.3, 0.5, 0.65]
    for design in (BOIN(max_n=36), MTPI2(max_n=36), CRM(max_n=36), CRM(max_n=36, ewoc=0.25)):
        oc = operating_characteristics(design, tox, trials=400, seed=2)
        p = oc.table["p_select"].to_numpy()
        assert p[2] == p.max() and p[2] > 0.45, (design.name, p)
        assert oc.mean_n == pytest.approx(36)
        toxic = operating_characteristics(design, [0.6, 0.7, 0.8], trials=200, seed=3)
        assert toxic.table["p_select"].iloc[-1] > 0.8 and toxic.p_stop_early > 0.8, design.name


def test_bad_design_settings_name_the_setting():
    with pytest.raises(ValueError, match="target"):
        BOIN(target=1.2)
    with pytest.raises(ValueError, match="max_n"):
        BOIN(max_n=2)
    with pytest.raises(ValueError, match="skeleton"):
        CRM(skeleton=(0.3, 0.2))
    with pytest.raises(ValueError, match="tox"):
        operating_characteristics(BOIN(), [0.3, 0.1])


def test_trial_commands(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["trial", "design", "boin", "--target", "0.3", "-o", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    assert "0.236" in result.output and (tmp_path / "t.csv").read_text().startswith("n,escalate_if_le")
    result = runner.invoke(app, ["trial", "oc", "--design", "3+3", "--tox", "0.05,0.15,0.3", "--trials", "300",
                                 "--seed", "1", "-o", str(tmp_path / "oc")])
    assert result.exit_code == 0, result.output
    assert "P(selected)" in result.output and (tmp_path / "oc" / "oc.csv").exists()
    for args, message in ((["trial", "oc", "--design", "x", "--tox", "0.1,0.2"], "not a design"),
                          (["trial", "oc", "--design", "boin", "--tox", "0.1,a"], "comma-separated"),
                          (["trial", "oc", "--design", "boin", "--tox", "0.3,0.1"], "must not decrease"),
                          (["trial", "oc", "--design", "boin", "--tox", "0.1,0.2", "--ewoc", "0.2"], "crm or tite-crm only"),
                          (["trial", "design", "crm"], "no decision table")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


@pytest.mark.parametrize("tox, expected_select, expected_n, expected_stop", [
    # the R package BOIN 2.7.2, get.oc(target = 0.3, p.true, ncohort = 10, cohortsize = 3,
    # ntrial = 1e5, seed = 6), run side by side: % selected per dose, mean patients per dose, % stopped
    ([0.05, 0.15, 0.30, 0.45, 0.60], [1.186, 23.292, 54.745, 19.219, 1.530], [4.174, 9.127, 11.149, 4.738, 0.804], 0.028),
    ([0.50, 0.60, 0.70, 0.80, 0.90], [16.651, 0.393, 0.007, 0, 0], [13.262, 1.228, 0.081, 0.002, 0.0], 82.949),
])
def test_boin_matches_the_r_package_side_by_side(tox, expected_select, expected_n, expected_stop):
    oc = operating_characteristics(BOIN(target=0.3, cohort_size=3, max_n=30), tox, trials=20000, seed=11)
    table = oc.table.iloc[:-1]
    p = table["p_select"].to_numpy()
    assert np.all(np.abs(100 * p - expected_select) < 100 * (4 * table["se_select"].to_numpy() + 0.002)), 100 * p
    assert np.all(np.abs(table["mean_n"].to_numpy() - expected_n) < 4 * table["se_n"].to_numpy() + 0.02)
    none = oc.table["p_select"].iloc[-1]
    assert abs(100 * none - expected_stop) < 100 * (4 * math.sqrt(max(none * (1 - none), 1e-4) / 20000) + 0.002)


def test_boin_selects_by_isotonic_regression():
    # the R package BOIN's select.mtd example (Yan F, Zhang L, Zhou Y, Pan H, Liu S, Yuan Y.
    # J Stat Softw 2020;94(13), p. 15): 3, 3, 15, 9, 0 patients with 0, 0, 4, 4 DLTs: MTD dose 3
    n, y = np.array([3, 3, 15, 9, 0]), np.array([0, 0, 4, 4, 0])
    assert BOIN(target=0.3).select(n, y, np.zeros(5, bool)) == 2
