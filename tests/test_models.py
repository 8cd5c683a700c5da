"""The model library: published behaviour of the defaults, ODE vs closed form, composition."""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from pkpd.models import ModelError, load, numpy_functions
from pkpd.nca import aplasia_metrics, exposure_metrics
from pkpd.simulate import covariate_matrix, fine_schedule, parameter_matrix, solve

CD19_1E6_PER_KG = dict(dose=7e7, ld=1, weight=70)  # 1e6 cells/kg for 70 kg, after Flu/Cy


def typical_curve(name, times, **covariates):
    model = load(name)
    P = parameter_matrix(model, None, 1)
    C = covariate_matrix(1, **{"weight": 70, **covariates})
    return {a: v[:, 0] for a, v in solve(model, times, P, C).values.items()}


def test_multiphasic_ode_matches_closed_form():
    model = load("multiphasic")
    f_ode = numpy_functions(model.ode())
    P = parameter_matrix(model, None, 1)
    C = covariate_matrix(1, dose=3e8)
    times = np.linspace(0, 365, 400)
    closed = solve(model, times, P, C).values["transgene"][:, 0]
    tmax = model.parameter("tmax").typical

    def rhs(t, y):
        return f_ode.rhs(t, y.reshape(2, 1), P, C).ravel()

    y0 = f_ode.initial(P, C).ravel()
    # integrate each phase separately: the right-hand side switches at Tmax
    first = solve_ivp(rhs, (0, tmax), y0, method="DOP853", rtol=1e-12, atol=1e-12, dense_output=True)
    second = solve_ivp(rhs, (tmax, 365), first.y[:, -1], method="DOP853", rtol=1e-12, atol=1e-12,
                       dense_output=True)
    ode = np.where(times < tmax, first.sol(np.minimum(times, tmax)).sum(0),
                   second.sol(np.maximum(times, tmax)).sum(0))
    assert np.max(np.abs(ode / closed - 1)) < 1e-6
    # the reference solver (LSODA through the dose event) agrees too
    stacked = solve(model.ode(), times, P, C, rtol=1e-12, atol=1e-14).values["transgene"][:, 0]
    assert np.max(np.abs(stacked / closed - 1)) < 1e-6


def test_stein_typical_curve():
    # Stein et al., CPT:PSP 2019;8:285, Table 1 and derived figures 
    t = np.unique(np.concatenate([np.arange(0, 28.001, 0.01), [9.3], np.arange(30, 366.0)]))
    c = typical_curve("multiphasic", t, dose=3e8)["transgene"]
    out = exposure_metrics(t, c, np.zeros_like(t))
    assert out["cmax"] == pytest.approx(24000, rel=1e-9) and out["tmax"] == pytest.approx(9.3)
    assert out["auc_0_28d"] == pytest.approx(1.72e5, rel=0.005)
    at = lambda x: np.interp(x, t, c)
    assert at(5.0 + 0.78) / at(5.0) == pytest.approx(2.0, rel=0.01)  # doubling time 0.78 d
    assert at(9.3 + 4.3) / 24000 == pytest.approx(0.5, rel=0.02)  # initial decline half-life 4.3 d
    assert at(365) / at(365 - 217) == pytest.approx(0.5, rel=0.02)  # terminal half-life ~217 d


def test_lag_variant_reproduces_liso_cel_figures():
    # Ogasawara et al., Clin Pharmacokinet 2021: lag 3.27 d, doubling 0.755 d, Tmax 9.29 d,
    # initial decline t1/2 5.0 d, terminal t1/2 352 d
    t = np.unique(np.concatenate([np.arange(0, 30, 0.01), [9.29], np.arange(30, 366.0)]))
    c = typical_curve("multiphasic_lag", t, dose=1e8)["transgene"]
    at = lambda x: np.interp(x, t, c)
    assert at(3.0) == pytest.approx(at(0.5))  # flat before the lag
    assert at(6.0 + 0.755) / at(6.0) == pytest.approx(2.0, rel=0.01)
    assert t[np.argmax(c)] == pytest.approx(9.29)
    assert at(9.29 + 5.0) / at(9.29) == pytest.approx(0.5, rel=0.03)
    terminal = math.log(2) * (365 - 100) / math.log(at(100) / at(365))
    assert terminal == pytest.approx(352, rel=0.05)


def test_smooth_variant_is_differentiable_in_tmax_and_close_to_the_kinked_curve():
    model = load("multiphasic_smooth")
    t = np.array([5.0, 9.0, 9.3, 9.6, 14.0, 60.0])

    def curve(tmax):
        P = parameter_matrix(model, {"tmax": tmax}, 1)
        return solve(model, t, P, covariate_matrix(1, dose=3e8)).values["transgene"][:, 0]

    h = 1e-4
    slopes = [(np.log(curve(tm + h)) - np.log(curve(tm - h))) / (2 * h) for tm in (9.3 - 1e-3, 9.3 + 1e-3)]
    assert np.allclose(slopes[0], slopes[1], rtol=1e-2, atol=1e-2)  # no jump at t = Tmax
    kinked = typical_curve("multiphasic", t, dose=3e8)["transgene"]
    far = np.abs(t - 9.3) > 3
    assert np.allclose(curve(9.3)[far], kinked[far], rtol=0.01)


def test_antigen_driven_cd19_b_cell_aplasia_and_full_recovery():
    # Mackensen et al., Nat Med 2022: B cells return after 110 +/- 32 d
    t = fine_schedule()
    curves = typical_curve("antigen_driven", t, **CD19_1E6_PER_KG)
    b = curves["bcells"]
    aplasia = aplasia_metrics(t[t > 0], b[t > 0], np.zeros((t > 0).sum(), int), threshold=5.0)
    assert aplasia["aplasia_onset"] <= 7.0
    back = aplasia["aplasia_onset"] + aplasia["aplasia_duration"]
    assert 80 <= back <= 140 and not aplasia["aplasia_ongoing"]
    b0 = load("antigen_driven").parameter("b0").typical
    assert b[-1] >= 0.5 * b0
    assert np.all(b[t > back + 30] > 5)  # no second wave of effectors


def test_bcma_lowers_igg_clearly_more_than_cd19():
    t = fine_schedule()
    name = "antigen_driven+immunoglobulins"
    cd19 = typical_curve(name, t, bcma=0, **CD19_1E6_PER_KG)["igg"]
    bcma = typical_curve(name, t, bcma=1, **CD19_1E6_PER_KG)["igg"]
    cd19_drop, bcma_drop = 1 - cd19.min() / cd19[0], 1 - bcma.min() / bcma[0]
    assert cd19_drop == pytest.approx(0.175, abs=0.05)  # ~17.5% after CD19 CAR-T (Mackensen et al., Nat Med 2022)
    assert bcma_drop > cd19_drop + 0.2


def test_cytokine_peaks_within_14_days_and_back_within_a_month():
    t = fine_schedule()
    curves = typical_curve("antigen_driven+cytokines", t, **CD19_1E6_PER_KG)
    model = load("antigen_driven+cytokines")
    for name in ("il6", "ifng", "il10", "il2"):
        c, base = curves[name], model.parameter(f"base_{name}").typical
        assert t[np.argmax(c)] <= 14
        assert c.max() > 2 * base
        assert c[np.searchsorted(t, 30)] < 1.2 * base


def test_pd_modules_at_steady_state_at_baseline():
    model = load("antigen_driven+cytokines+immunoglobulins")
    f = numpy_functions(model)
    P = parameter_matrix(model, None, 1)
    C = covariate_matrix(1, dose=0.0, ld=0, bcma=1, weight=70)
    y0 = f.initial(P, C)
    np.testing.assert_allclose(f.rhs(0.0, y0, P, C), 0.0, atol=1e-12)
    np.testing.assert_allclose(f.rhs(100.0, y0, P, C), 0.0, atol=1e-12)


def test_more_dose_no_less_expansion():
    model = load("antigen_driven")
    doses = np.array([1e7, 3e7, 7e7, 1.5e8, 3e8, 6e8, 1.2e9])
    P = parameter_matrix(model, None, len(doses))
    C = covariate_matrix(len(doses), dose=doses, ld=1, weight=70)
    cmax = solve(model, fine_schedule(), P, C).values["transgene"].max(axis=0)
    assert np.all(np.diff(cmax) >= 0)


@pytest.mark.parametrize("spec, wording", [
    ("multiphasic+cytokines", r"needs signal\(s\) engaged"),
    ("cytokines+antigen_driven", "one cellular-kinetic module followed by PD modules"),
    ("antigen_driven+cytokines+cytokines", "listed twice"),
    ("antigen_driven+nonesuch", "unknown model 'nonesuch'"),
    ("antigen_driven+", "empty module name"),
])
def test_composition_errors_are_clear(spec, wording):
    with pytest.raises(ModelError, match=wording):
        load(spec)


def test_users_own_model_file(tmp_path):
    path = tmp_path / "monoexp.py"
    path.write_text('''
from pkpd.models import Module, Observation, Parameter

def closed_form(t, p, c, x, m):
    return {"C": m.where(t < 0, 0, p.c0 * m.exp(-p.k * t))}

monoexp = Module(
    name="monoexp", description="a user's mono-exponential decline",
    parameters=(Parameter("c0", 1000.0, "copies/ug", iiv=0.3), Parameter("k", 0.1, "1/d", iiv=0.2)),
    closed_form=closed_form,
    signals={"car": lambda t, s, p, c, x, m: s.C},
    observations=(Observation("transgene", lambda t, s, p, c, x, m: s.C, "copies/ug"),),
)
''')
    model = load(str(path))
    assert model.name == "monoexp" and model.is_closed_form
    # a file name with dots (a version number) is the file, not a shorter name
    versioned = tmp_path / "monoexp_v1.2.py"
    versioned.write_text(path.read_text())
    assert load(str(versioned)).name == load(f"{versioned}:monoexp").name == "monoexp"
    values = solve(model, [0.0, 10.0], parameter_matrix(model, None, 1), covariate_matrix(1)).values
    np.testing.assert_allclose(values["transgene"][:, 0], [1000.0, 1000.0 * math.exp(-1.0)])


def test_model_function_errors_name_the_module(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text('''
from pkpd.models import Module, Observation, Parameter
broken = Module(name="broken", description="uses an undeclared parameter",
    parameters=(Parameter("k", 0.1, "1/d"),),
    closed_form=lambda t, p, c, x, m: {"C": m.exp(-p.kk * t)},
    observations=(Observation("transgene", lambda t, s, p, c, x, m: s.C, "copies/ug"),))
''')
    with pytest.raises(ModelError, match="module broken uses parameter 'kk'"):
        load(str(path))


def test_parameters_declare_units_sources_and_priors():
    for name in ("multiphasic", "antigen_driven", "cytokines", "immunoglobulins"):
        module_model = load(name if name in ("multiphasic", "antigen_driven") else f"antigen_driven+{name}")
        for p in module_model.parameters:
            assert p.unit and p.source, p.name
            lo, hi = p.bounds
            assert lo < p.typical < hi
