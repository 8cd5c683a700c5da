"""Scripted model comparison: a TOML spec, fits on dask (local or a cluster), a leaderboard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .leaderboard import leaderboard, rank, write
from .run import read_result, run
from .spec import FitSpec, RunSpec, SpecError, load_spec


@dataclass(frozen=True)
class Comparison:
    """The leaderboard and, per fit id, its result record (status, reason, seconds, ...)."""

    leaderboard: pd.DataFrame
    fits: dict
    directory: Path

    def fit_result(self, fit_id: str):
        """The FitResult of a finished fit."""
        from ..fit import FitResult

        return FitResult.load(self.directory / "fits" / fit_id.replace("/", "__"))


def compare(spec: str | Path | RunSpec, out: str | Path | None = None, *, scheduler: str | None = None,
            workers: int | None = None, on_result=None) -> Comparison:
    """Run every fit of `spec` (skipping finished ones in `out`) and rank them."""
    spec = spec if isinstance(spec, RunSpec) else load_spec(spec)
    out = Path(out) if out is not None else spec.source.parent / f"{spec.name}-run"
    fits = run(spec, out, scheduler=scheduler, workers=workers, on_result=on_result)
    table = leaderboard(out)
    write(table, out)
    return Comparison(table, fits, out)


__all__ = ["Comparison", "FitSpec", "RunSpec", "SpecError", "compare", "leaderboard", "load_spec", "rank",
           "read_result", "run", "write"]
