"""Simulation-based calibration: the plumbing, and a reduced SBC (about a minute) in the default run
(and so in CI)."""

import numpy as np
import pandas as pd
import pytest
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


def test_sbc_checkpoint_resumes_and_refuses_other_settings(tmp_path):
    checkpoint = tmp_path / "replicates.csv"
    small = dict(subjects=4, draws=60, tune=60, seed=5, checkpoint=checkpoint)
    first = sbc("multiphasic", replicates=2, **small)
    assert len(pd.read_csv(checkpoint)) == 2
    calls = []
    resumed = sbc("multiphasic", replicates=3, progress=lambda done, total: calls.append(done), **small)
    assert calls == [3]  # replicates 0 and 1 came from the checkpoint, only replicate 2 was fitted
    pd.testing.assert_frame_equal(resumed.ranks.iloc[:2], first.ranks, check_dtype=False)
    # a run killed while writing its last line: that replicate is fitted again
    lines = checkpoint.read_text().splitlines()
    checkpoint.write_text("\n".join(lines[:-1] + [lines[-1][:12]]))  # no final newline
    calls.clear()
    again = sbc("multiphasic", replicates=3, progress=lambda done, total: calls.append(done), **small)
    assert calls == [3] and len(again.ranks) == 3
    with pytest.raises(ValueError, match=r"other settings \(draws: 60 there, 80 now\)"):
        sbc("multiphasic", replicates=3, **(small | {"draws": 80}))


def test_sbc_replicate_time_cap_is_counted_not_hidden(tmp_path):
    with pytest.raises(ValueError, match="only 0 of 2 SBC replicates finished within replicate_seconds"):
        sbc("multiphasic", replicates=2, subjects=4, draws=60, tune=60, replicate_seconds=1e-3,
            checkpoint=tmp_path / "r.csv")
    table = pd.read_csv(tmp_path / "r.csv")
    assert list(table["status"]) == ["timed out", "timed out"]
