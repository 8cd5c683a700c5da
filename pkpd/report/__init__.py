"""The HTML report of a fit run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..fit.run import Run
from .html import SECTIONS, write_report


def make_report(run: Run, out: str | Path, *, ppc_dir: Path | None = None, dose_dir: Path | None = None,
                compare_dir: Path | None = None, seed: int = 0) -> Path:
    """The report, computing the posterior-predictive checks and the dose selection (default
    settings) when their folders are not given; a dose selection that has no evaluable target
    (the fit lacks the analytes) is left out with a note."""
    from ..dose import select_dose, write_dose
    from ..predict import posterior_predictive
    from ..predict.plots import write_ppc

    with tempfile.TemporaryDirectory(prefix="pkpd-report-") as tmp:
        if ppc_dir is None:
            ppc_dir = Path(tmp) / "ppc"
            write_ppc(posterior_predictive(run, seed=seed), ppc_dir)
        if dose_dir is None:
            try:
                selection = select_dose(run, seed=seed)
            except ValueError:
                selection = None
            if selection is not None:
                dose_dir = Path(tmp) / "dose"
                write_dose(selection, dose_dir, run.cohort)
        return write_report(run, out, ppc_dir=ppc_dir, dose_dir=dose_dir, compare_dir=compare_dir)


__all__ = ["SECTIONS", "make_report", "write_report"]
