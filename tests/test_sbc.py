"""Simulation-based calibration: the plumbing, and a reduced SBC (about a minute) in the default run
(and so in CI)."""

import numpy as np
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.fit.sbc import sbc


def test_sbc_command_writes_ranks_summary_and_plot(tmp_path):
    result = CliRunner().invoke(app, ["sbc", "multiphasic", "-o", str(tmp_path), "--replicates", "3",
                                      "--subjects", "4", "--draws", "60", "--tune", "60"])
    assert result.exit_code == 0, result.output
    for name in ("ranks.csv", "summary.csv", "ranks.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "typical_cmax" in result.output


def test_reduced_sbc_is_uniform():
    # 30 replicates of a small closed-form design; a miscalibrated engine (wrong prior,
    # likelihood or censoring) gives p-values near zero for several parameters
    result = sbc("multiphasic", replicates=30, subjects=6, draws=200, tune=200, bins=5, seed=2)
    p = result.summary["p_value"].to_numpy()
    assert np.all(p > 0.001), result.summary
    assert np.mean(p < 0.05) <= 0.3
