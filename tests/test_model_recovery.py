"""Model recovery (analyses/model_recovery.py): the confusion matrix by hand, and the comparison
ranking the true model first in at least 80% of simulated cohorts (slow: 90 NUTS fits)."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "analyses" / "model_recovery.py"


def recovery_module():
    spec = importlib.util.spec_from_file_location("model_recovery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_confusion_matrix_tallies_the_model_ranked_first():
    module = recovery_module()
    cohorts = [("a-0", "a", None), ("a-1", "a", None), ("b-0", "b", None)]
    board = pd.DataFrame({"dataset": ["a-0", "a-0", "a-1", "a-1", "b-0", "b-0"],
                          "model": ["a", "b", "b", "a", "a", "b"], "rank": [0, 1, 0, 1, 1, 0]})
    matrix = module.confusion(board, cohorts)
    assert matrix.loc["a", "a"] == 1 and matrix.loc["a", "b"] == 1 and matrix.loc["b", "b"] == 1
    assert matrix.loc["b", "a"] == 0


@pytest.mark.slow
def test_the_comparison_ranks_the_true_model_first(tmp_path):
    matrix, rate = recovery_module().recover(tmp_path, seeds=10)
    print(matrix.to_string(), f"\nrecovery rate {rate:.0%}")
    assert rate >= 0.8, matrix
