"""The validation suite: published NONMEM and Monolix estimates reproduced on public data, and a
simulated CAR-T trial with a split first dose and a re-infusion recovered (validation/run.py;
sources and licences in validation/README.md). Slow: about 15 minutes on 2 cores."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_validation_row_passes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "validation" / "run.py"), "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=3600)
    print(done.stdout[-6000:])
    table = pd.read_csv(tmp_path / "validation.csv")
    assert set(table["case"]) == {"warfarin", "phenobarbital", "cart (simulated)"}
    assert len(table) == 8 + 7 + 3 + 5 + 8  # warfarin typical + iiv + residual, phenobarbital, CAR-T truth
    assert table["pass"].all(), table[~table["pass"]].to_string()
    assert done.returncode == 0, done.stderr[-3000:]
    # the CAR-T case's VPC and report rendered
    assert (tmp_path / "cart_ppc" / "vpc_transgene.png").is_file()
    assert "data:image/png;base64," in (tmp_path / "cart_report.html").read_text()
