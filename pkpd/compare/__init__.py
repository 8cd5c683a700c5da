"""Scripted model comparison: a TOML spec, fits on dask (local or a cluster), a leaderboard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .leaderboard import leaderboard, rank, write
from .run import read_result, run
from .search import SearchResult, search
from .spec import FitSpec, RunSpec, SpecError, load_spec


@dataclass(frozen=True)
class Comparison:
    """The leaderboard and, per fit id, its result record (status, reason, seconds, ...)."""

    leaderboard: pd.DataFrame
    fits: dict
    directory: Path
    search: SearchResult | None = None  # the covariate search, when the spec has a [search]

    def fit_result(self, fit_id: str):
        """The FitResult of a finished fit."""
        from ..fit import FitResult

        return FitResult.load(self.directory / "fits" / fit_id.replace("/", "__"))


def compare(spec: str | Path | RunSpec, out: str | Path | None = None, *, scheduler: str | None = None,
            workers: int | None = None, on_result=None, weigh_unconverged: bool = False) -> Comparison:
    """Run every fit of `spec` (skipping finished ones in `out`), then its covariate search if
    it has a [search], and rank them all (stacking weights over the converged fits unless
    `weigh_unconverged`)."""
    spec = spec if isinstance(spec, RunSpec) else load_spec(spec)
    out = Path(out) if out is not None else spec.source.parent / f"{spec.name}-run"
    fits = run(spec, out, scheduler=scheduler, workers=workers, on_result=on_result)
    found = None
    if spec.search is not None:
        found = search(spec, out, scheduler=scheduler, workers=workers, on_result=on_result)
        fits = found.results
    table = leaderboard(out, weigh_unconverged=weigh_unconverged)
    write(table, out)
    return Comparison(table, fits, out, found)


__all__ = ["Comparison", "FitSpec", "RunSpec", "SearchResult", "SpecError", "compare", "leaderboard", "load_spec",
           "rank", "read_result", "run", "search", "write"]
