"""Quasi-steady-state reductions checked against the ODEs they approximate."""

import json
import textwrap

import numpy as np
import pytest

from pkpd import example_data, read_cohort
from pkpd.models import ModelError, full_form, load
from pkpd.simulate.reduction import ReductionCheck, check_reduction


@pytest.fixture(scope="module")
def cohort():
    data = read_cohort(example_data("adam"))
    return data.select(data.subject_ids[:6]).select_analytes(["transgene", "bcells", "il6", "il10"])


def test_full_form_swaps_the_reduction_for_its_odes_and_keeps_overrides():
    reduced = load("antigen_driven+cytokines_qss+igg").with_typical(base_il6=4.0)
    full = full_form(reduced)
    assert full.name == "antigen_driven+cytokines+igg"
    assert set(full.parameter_names) - set(reduced.parameter_names) == {"kel_il6", "kel_ifng", "kel_il10", "kel_il2"}
    assert full.parameter("base_il6").typical == 4.0
    assert full_form(load("antigen_driven+igg")) is None


def test_a_reduction_naming_a_module_its_file_lacks_is_a_clear_error(tmp_path):
    path = tmp_path / "my_qss.py"
    path.write_text(textwrap.dedent("""
        from pkpd.models import Module, Observation, Parameter, LogNormal
        drug_qss = Module(name="drug_qss", description="d", kind="ck",
                          parameters=(Parameter("a", 1.0, "1", "a", "s", prior=LogNormal(1.0, 0.5)),),
                          closed_form=lambda t, p, c, x, m: {},
                          observations=(Observation("conc", lambda t, s, p, c, x, m: p.a, "ng/mL", error="log",
                                                    sigma=0.2, source="s"),),
                          approximates="drug_turnover")
    """))
    with pytest.raises(ModelError, match="approximates 'drug_turnover', which .*my_qss.py does not define"):
        full_form(load(str(path)))


def test_samples_hours_after_the_infusion_are_not_at_quasi_steady_state(cohort):
    model = load("antigen_driven+cytokines_qss")
    P = np.tile([p.typical for p in model.parameters], (len(cohort.subject_ids), 1))
    check = check_reduction(model, cohort, P)
    # the cellular kinetics are the same ODEs in both: only solver noise
    assert check.max_difference["transgene"] < 1e-5 and check.max_difference["bcells"] < 1e-5
    assert check.over["transgene"] == check.over["bcells"] == 0
    # IL-6 (half-life 20 min) and IL-10 (2 h) lag their drive in the first hours (turnover ODEs,
    # LSODA): the reduction flags those records against a tenth of the residual SD (0.04)
    assert check.tolerance["il6"] == pytest.approx(0.04)
    assert check.over["il6"] >= 1 and check.max_difference["il6"] > 0.04
    assert not check.ok and all(w["time"] < 7 for w in check.worst)
    assert "il6" in check.message() and "not at quasi-steady state" in check.message()
    # saved with the fit (JSON in the posterior's attributes) and read back unchanged
    assert ReductionCheck(**json.loads(json.dumps(check.to_dict()))) == check
    assert check_reduction(load("antigen_driven"), cohort, P[:, :len(load("antigen_driven").parameters)]) is None
