"""Model averaging: PTA and posterior-predictive checks of a stacking-weighted mixture of fits,
against the analytic mixture of point posteriors; weights and members checked."""

import math

import numpy as np
import pytest
import scipy.stats as st

from pkpd.dose import Target, select_dose
from pkpd.predict import posterior_predictive
from pkpd.predict.average import ModelAverage
from pkpd.predict.ppc import weighted_median
from tests.test_dose import OMEGA_CMAX, synthetic_run


def test_a_model_average_attains_the_weighted_mixture_of_its_fits():
    # two point posteriors whose typical Cmax differ by two omegas: P(Cmax >= threshold) is
    # sf(0.5) under the first and sf(-1.5) under the second; the average weighs them 1:3
    low, high = synthetic_run(), synthetic_run(cmax=24000.0 * math.exp(2 * OMEGA_CMAX))
    threshold = 24000.0 * math.exp(0.5 * OMEGA_CMAX)
    target = Target("peak", "transgene", "cmax", ">=", threshold, "efficacy")
    average = ModelAverage((low, high), (0.25, 0.75), ("low", "high"))
    assert average.allocate(40) == [10, 30] and average.allocate(3) == [1, 2]
    selection = select_dose(average, ["3e8"], targets=[target], draws=40, patients=250, seed=3)
    expected = 0.25 * st.norm.sf(0.5) + 0.75 * st.norm.sf(-1.5)
    assert selection.pta.iloc[0]["probability"] == pytest.approx(expected, abs=0.02)
    # the draws of the low fit hit ~0.31, those of the high one ~0.93: the interval spans both
    assert selection.pta.iloc[0]["lower"] < 0.45 and selection.pta.iloc[0]["upper"] > 0.85
    members = selection.settings["model_average"]["members"]
    assert [(m["fit"], m["weight"]) for m in members] == [("low", 0.25), ("high", 0.75)]
    assert selection.recommendation["run"]["model"] == "average of low (0.25), high (0.75)"


@pytest.mark.parametrize("weights, wording", [((0.5, 0.6), "sum to 1"), ((1.5, -0.5), "non-negative"),
                                              ((1.0,), "one weight and one label per fit")])
def test_a_model_average_refuses_weights_that_are_not_a_distribution(weights, wording):
    with pytest.raises(ValueError, match=wording):
        ModelAverage((synthetic_run(), synthetic_run()), weights, ("a", "b"))



def test_the_posterior_predictive_of_an_average_pools_its_fits():
    low, high = synthetic_run(), synthetic_run(cmax=24000.0 * math.exp(2 * OMEGA_CMAX))
    alone = posterior_predictive(low, replicates=40, draws=10, seed=1)
    mixed = posterior_predictive(ModelAverage((low, high), (0.25, 0.75), ("low", "high")),
                                 replicates=40, draws=10, seed=1)
    assert mixed.replicates.shape == alone.replicates.shape
    assert [m["weight"] for m in mixed.models["members"]] == [0.25, 0.75]
    # PRED is the weighted median: the high fit's typical curve (weight 0.75)
    high_only = posterior_predictive(high, replicates=40, draws=10, seed=1)
    np.testing.assert_allclose(mixed.records["pred"], high_only.records["pred"])
    # 30 of the 40 replicates come from the high fit: the median replicate peak moves up
    peak = alone.records["time"].sub(9).abs().idxmin()
    assert np.median(mixed.replicates[:, peak]) > np.median(alone.replicates[:, peak]) * math.exp(OMEGA_CMAX)


def test_weighted_median_by_hand():
    values = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0]])
    np.testing.assert_allclose(weighted_median(values, np.array([0.2, 0.2, 0.6])), [3.0, 3.0])
    np.testing.assert_allclose(weighted_median(values, np.array([0.6, 0.2, 0.2])), [1.0, 5.0])
    np.testing.assert_allclose(weighted_median(values[:1], np.array([1.0])), [1.0, 5.0])
