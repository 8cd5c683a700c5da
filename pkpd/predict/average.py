"""Model averaging: predictions from the stacking-weighted mixture of several fits.

The fits of a comparison that were fitted to the same records, each with its stacking weight w_m
(Yao, Vehtari, Simpson and Gelman, Bayesian Analysis 2018; the leaderboard's `weight` column),
define the mixture predictive p(y~ | y) = sum_m w_m p(y~ | y, model m). It is simulated by giving
each fit the share w_m of the posterior draws (largest remainders, so the shares add up) and
pooling what the draws simulate: a posterior-predictive check or a probability of target
attainment of the average then rests on every model in proportion to its weight.

By default only converged fits carry weight (the leaderboard's rule), and fits whose weight is
below `min_weight` are left out and the others' weights renormalised; both are recorded in
`notes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fit.result import FitResult

MIN_WEIGHT = 0.01


@dataclass(frozen=True)
class ModelAverage:
    """Fits of the same records with weights that sum to one."""

    members: tuple[FitResult, ...]
    weights: tuple[float, ...]
    labels: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.members or len(self.members) != len(self.weights) or len(self.labels) != len(self.members):
            raise ValueError("a model average needs one weight and one label per fit, and at least one fit")
        w = np.asarray(self.weights, float)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1) > 1e-6:
            raise ValueError(f"the weights of a model average must be non-negative and sum to 1 (got "
                             f"{', '.join(f'{x:g}' for x in w)})")
        hashes = {m.tree.attrs.get("data_hash") for m in self.members}
        if len(hashes) > 1:
            raise ValueError(f"the fits {', '.join(self.labels)} were fitted to different data; only fits of "
                             "the same records can be averaged")
        analytes = {tuple(m.analytes) for m in self.members}
        if len(analytes) > 1:
            raise ValueError(f"the fits {', '.join(self.labels)} were fitted to different analytes "
                             f"({'; '.join(', '.join(a) for a in sorted(analytes))}); average fits of the same records")

    @classmethod
    def of(cls, result: "FitResult | ModelAverage") -> "ModelAverage":
        """`result` itself when it is an average, else the average of one fit (weight 1)."""
        return result if isinstance(result, ModelAverage) else cls((result,), (1.0,), (result.model.name,))

    @property
    def cohort(self):
        return self.members[0].cohort

    @property
    def label(self) -> str:
        if len(self.members) == 1:
            return self.labels[0]
        return "average of " + ", ".join(f"{label} ({w:.2f})" for label, w in zip(self.labels, self.weights))

    def allocate(self, n: int) -> list[int]:
        """Each member's share of n draws: n * w_m rounded by largest remainders (they sum to n)."""
        exact = n * np.asarray(self.weights, float)
        counts = np.floor(exact).astype(int)
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:n - counts.sum()]] += 1
        return [int(c) for c in counts]

    def describe(self) -> dict:
        """The members, their weights and the notes (for the records of `pkpd ppc` and `pkpd dose`)."""
        return {"members": [{"fit": label, "model": m.model.name, "weight": float(w)}
                            for label, m, w in zip(self.labels, self.members, self.weights)],
                "notes": list(self.notes)}


def from_comparison(folder: str | Path, *, dataset: str | None = None, weigh_unconverged: bool = False,
                    min_weight: float = MIN_WEIGHT) -> ModelAverage:
    """The stacking-weighted average of a comparison run folder's fits of one dataset (the
    leaderboard's weights: converged fits only unless `weigh_unconverged`)."""
    from ..compare import leaderboard

    folder = Path(folder)
    if not (folder / "fits").is_dir():
        raise ValueError(f"{folder} is not a comparison run folder (no fits/): give the folder `pkpd compare` wrote")
    if not 0 <= min_weight < 1:
        raise ValueError(f"min_weight must lie in [0, 1), not {min_weight}")
    table = leaderboard(folder, weigh_unconverged=weigh_unconverged)
    datasets = list(dict.fromkeys(table["dataset"]))
    if dataset is None and len(datasets) > 1:
        raise ValueError(f"{folder} compares fits of {len(datasets)} datasets ({', '.join(datasets)}): "
                         "say which to average (--dataset NAME)")
    dataset = dataset if dataset is not None else datasets[0] if datasets else None
    if dataset not in datasets:
        raise ValueError(f"{folder} has no fits of dataset {dataset!r} (it has {', '.join(datasets) or 'none'})")
    rows = table[(table["dataset"] == dataset) & table["weight"].notna()]
    if rows.empty:
        raise ValueError(f"no fit of dataset {dataset} in {folder} has a stacking weight: none converged. Rerun "
                         "them longer (see each fit's diagnostics), or pass --weigh-unconverged to average "
                         "them anyway")
    notes = [f"{m}/{v}: left out, not converged" for m, v in
             zip(*[table.loc[(table["dataset"] == dataset) & table["weight"].isna() & table["elpd_loo"].notna(), c]
                   for c in ("model", "variant")])]
    kept = rows[rows["weight"] >= min_weight]
    notes += [f"{r.model}/{r.variant}: left out, weight {r.weight:.3f} < {min_weight:g}"
              for r in rows[rows["weight"] < min_weight].itertuples()]
    if kept.empty:
        kept = rows.nlargest(1, "weight")
    weights = kept["weight"].to_numpy(float)
    members = tuple(FitResult.load(folder / "fits" / f"{dataset}__{r.model}__{r.variant}") for r in kept.itertuples())
    labels = tuple(f"{r.model}/{r.variant}" for r in kept.itertuples())
    return ModelAverage(members, tuple(float(w) for w in weights / weights.sum()), labels, tuple(notes))
