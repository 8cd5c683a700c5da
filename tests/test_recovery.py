"""Parameter recovery by the population engine on simulated data: full NUTS fits, about a minute
each, in the default run (and so in CI) so that every change to the engine is checked."""

from pkpd.fit import fit
from pkpd.models import load
from pkpd.simulate import simulate


def _inside(result, model, names):
    table = result.parameter_table().set_index("name")
    missed = []
    for name in names:
        row, true = table.loc[name], model.parameter(name).typical
        if not row["lower"] <= true <= row["upper"]:
            missed.append(f"{name}: true {true:g} outside [{row['lower']:.4g}, {row['upper']:.4g}]")
    return missed


def test_multiphasic_recovery():
    model = load("multiphasic_smooth")
    cohort = simulate(model, ["1e6/kg"], n=24, seed=31)
    # the default length: omega_beta (about 50% shrinkage) mixes slowest, R-hat ~1.02 at 500 + 500
    result = fit(model, cohort, chains=4, draws=1000, tune=1000, seed=3, progress=False)
    assert not _inside(result, model, ["cmax", "tmax", "foldx", "alpha", "fb", "beta"])
    table = result.parameter_table()
    typical = table[table["kind"] == "typical"]
    assert typical["r_hat"].max() <= 1.01 and typical["ess_bulk"].min() >= 400, typical
    # the variability SDs mix slower (omega_beta about 50% shrinkage): ESS 354, R-hat 1.0098 in one
    # CI run, 1.0092 alone on 2026-11-30; 1.022 (twice) inside a fresh clone's run of the whole suite
    # with empty caches: that process compiled other models' code itself before this fit, and its
    # draws then differ from a new process's (see tests/test_reproducible.py), so the limit is 1.03
    assert table["r_hat"].max() <= 1.03 and table["ess_bulk"].min() >= 200, table
    assert result.divergences() <= 5


def test_antigen_driven_recovery():
    model = load("antigen_driven")
    cohort = simulate(model, ["1e6/kg", "3e8"], n=6, seed=32, analytes=["transgene", "bcells"])
    result = fit(model, cohort, chains=4, draws=300, tune=300, seed=4, progress=False)
    missed = _inside(result, model, ["rho", "alpha", "fblood", "b0", "kkills", "ks"])
    assert len(missed) <= 1, missed  # 95% intervals: one miss in six is within chance
    assert result.parameter_table()["r_hat"].max() < 1.05
    assert result.tree.attrs["solver_max_log_error"] < 0.01
