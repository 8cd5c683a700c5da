"""Stepwise covariate search as a comparison: forward inclusion, then backward elimination.

    [search]
    model = "multiphasic"          # a [[models]] name: its iiv, fixed effects and priors apply
    dataset = "example"            # optional with one dataset
    candidates = ["cmax~lymphodepletion", "tmax~weight:power", "fb~disease"]
    forward = 2.0                  # include a relation when it raises the ELPD by > forward x SE
    backward = 2.0                 # drop one when removing it costs < backward x SE

This is the stepwise covariate modelling that PsN's scm runs with likelihood-ratio tests, decided
instead by the subject-level ELPD (integrated LOO, pkpd.compare.integrated) and the standard
error of the paired difference, sqrt(n var(elpd_i(A) - elpd_i(B))) over the n subjects:
- forward: from the model without covariates, each step fits the current relations plus each
  remaining candidate (one batch of fits on dask); the candidate with the largest ELPD gain is
  included if the gain exceeds `forward` SEs; repeat until none does;
- backward: each step fits the current relations minus each one; the relation whose removal
  costs least (in SEs) is dropped if that cost is below `backward` SEs; repeat until none is.
Each fit is a comparison fit like any other (fits/DATASET__MODEL__scm.RELATIONS, resumable by its
digest), so the leaderboard ranks them all and the final model is one of them. The run folder
keeps the log: search_log.csv (one row per candidate evaluated) and search.json (the settings,
the path and the final relations and fit).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .._files import atomic_path, write_text
from .leaderboard import exact_refits
from .run import SUBJECT_FILE, fit_directory, run
from .spec import FitSpec, RunSpec, SearchSpec, derived_seed

LOG_FILE, RESULT_FILE = "search_log.csv", "search.json"


@dataclass(frozen=True)
class SearchResult:
    relations: tuple[str, ...]   # the final model's covariate relations
    fit_id: str                  # its fit
    log: pd.DataFrame            # step, direction, relation, covariates, fit, elpd, d_elpd, se, z, converged, decision
    results: dict                # {fit id: result record} of every fit of the run folder's spec and search


def variant_name(relations: tuple[str, ...]) -> str:
    """'scm.base', 'scm.cmax-lymphodepletion.tmax-weight-power' (a hash beyond 120 characters)."""
    if not relations:
        return "scm.base"
    name = "scm." + ".".join(r.replace("~", "-").replace(":", "-") for r in sorted(relations))
    return name if len(name) <= 120 else "scm." + hashlib.sha256(name.encode()).hexdigest()[:16]


def search_fit(spec: RunSpec, relations: tuple[str, ...]) -> FitSpec:
    """The fit of the searched model with `relations`: a [[models]] fit with exactly these
    covariates when there is one (fitted once), else a new fit from the model's settings."""
    wanted = spec.search
    own = [f for f in spec.fits if f.label == wanted.model and f.dataset.name == wanted.dataset]
    for fit in own:
        if sorted(fit.covariates) == sorted(relations):
            return fit
    fit_id = f"{wanted.dataset}/{wanted.model}/{variant_name(relations)}"
    return replace(own[0], id=fit_id, variant=variant_name(relations), covariates=tuple(sorted(relations)),
                   seed=derived_seed(spec.seed, fit_id))


def subject_elpd(out: Path, fit: FitSpec) -> pd.Series | None:
    """Each subject's ELPD of a finished fit (integrated LOO, exact refits in place), or None."""
    try:
        table = pd.read_csv(fit_directory(out, fit) / SUBJECT_FILE, dtype={"subject": str})
    except (OSError, ValueError):
        return None
    elpd = table.set_index("subject")["elpd_i"].astype(float)
    for subject, value in exact_refits(fit_directory(out, fit), fit.digest).items():
        if subject in elpd.index:
            elpd[subject] = value
    return elpd


def paired_difference(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """(sum of elpd_a - elpd_b over subjects, its SE sqrt(n var))."""
    diff = (a - b.reindex(a.index)).to_numpy(float)
    return float(diff.sum()), float(np.sqrt(diff.size * diff.var()))


def search(spec: RunSpec, out: str | Path, *, scheduler: str | None = None, workers: int | None = None,
           on_result=None) -> SearchResult:
    """Run the [search] of `spec` in the run folder `out` (after or with its other fits)."""
    out = Path(out)
    wanted: SearchSpec = spec.search
    fits = {f.id: f for f in spec.fits}
    rows: list[dict] = []
    results: dict = {}

    def evaluate(batch: list[tuple[str, tuple[str, ...]]]) -> dict:
        """Fit each (relation, covariates) of the batch (resuming finished ones): {relation: (fit, elpd)}."""
        for _, relations in batch:
            fit = search_fit(spec, relations)
            fits[fit.id] = fit
        results.update(run(replace(spec, fits=tuple(fits.values())), out, scheduler=scheduler, workers=workers,
                           on_result=on_result))
        outcome = {}
        for relation, relations in batch:
            fit = search_fit(spec, relations)
            ok = results.get(fit.id, {}).get("status") == "ok"
            outcome[relation] = (fit, subject_elpd(out, fit) if ok else None, results.get(fit.id, {}))
        return outcome

    current: tuple[str, ...] = ()
    best_fit, best_elpd, base_result = evaluate([("", current)])[""]
    step = 0
    if best_elpd is None:  # nothing to compare against: the log says why
        rows.append(_row(0, "start", "", best_fit, None, None, base_result, sign=1))
    while best_elpd is not None and (remaining := [c for c in wanted.candidates if c not in current]):
        step += 1
        picked = _step(step, "forward", evaluate([(c, current + (c,)) for c in remaining]), best_elpd,
                       wanted.forward, rows)
        if picked is None:
            break
        current = tuple(sorted(current + (picked[0],)))
        best_fit, best_elpd = picked[1:]
    while current:
        step += 1
        picked = _step(step, "backward", evaluate([(r, tuple(x for x in current if x != r)) for r in current]),
                       best_elpd, wanted.backward, rows)
        if picked is None:
            break
        current = tuple(x for x in current if x != picked[0])
        best_fit, best_elpd = picked[1:]
    log = pd.DataFrame(rows, columns=["step", "direction", "relation", "covariates", "fit", "elpd", "d_elpd", "se",
                                      "z", "converged", "decision"])
    result = SearchResult(current, best_fit.id, log, results)
    _write(out, wanted, result)
    return result


def _step(step: int, direction: str, outcome: dict, reference: pd.Series, threshold: float, rows: list[dict]):
    """Log one step's candidates and decide: forward, the largest ELPD gain above `threshold`
    SEs is included; backward, the relation whose removal costs least, below `threshold` SEs, is
    dropped. Returns (relation, fit, subject ELPD of the new current model) or None (stop)."""
    forward = direction == "forward"
    pick = None
    for relation, (fit, elpd, result) in outcome.items():
        row = _row(step, direction, relation, fit, elpd, reference, result, sign=1 if forward else -1)
        rows.append(row)
        if forward and row["z"] > threshold and row["d_elpd"] > 0 and (pick is None or row["d_elpd"] > pick[0]["d_elpd"]):
            pick = (row, fit, elpd)
        elif not forward and row["z"] < threshold and (pick is None or row["z"] < pick[0]["z"]):
            pick = (row, fit, elpd)
    if pick is None:
        _mark(rows, step, None, f"none above {threshold:g} SE: forward inclusion stops" if forward else
              f"every relation costs more than {threshold:g} SE to remove: kept")
        return None
    _mark(rows, step, pick[0]["relation"], "included" if forward else "dropped")
    return pick[0]["relation"], pick[1], pick[2]


def _row(step, direction, relation, fit, elpd, reference, result, sign) -> dict:
    """One evaluated candidate: d_elpd = ELPD(candidate) - ELPD(current) forward, and the cost
    of removal ELPD(current) - ELPD(reduced) backward; z = d_elpd / se (NaN for a failed fit)."""
    row = {"step": step, "direction": direction, "relation": relation, "covariates": "; ".join(fit.covariates),
           "fit": fit.id, "elpd": np.nan, "d_elpd": np.nan, "se": np.nan, "z": np.nan,
           "converged": bool(result.get("converged", False)), "decision": ""}
    if elpd is None:
        row["decision"] = f"fit failed: {result.get('reason', 'no subject ELPD')}"
        return row
    d, se = paired_difference(elpd, reference) if sign > 0 else paired_difference(reference, elpd)
    row.update(elpd=float(elpd.sum()), d_elpd=d, se=se, z=d / se if se > 0 else np.inf * np.sign(d))
    return row


def _mark(rows: list[dict], step: int, relation: str | None, decision: str) -> None:
    for row in rows:
        if row["step"] == step and not row["decision"] and (relation is None or row["relation"] == relation):
            row["decision"] = decision


def _write(out: Path, wanted: SearchSpec, result: SearchResult) -> None:
    with atomic_path(out / LOG_FILE) as tmp:
        result.log.to_csv(tmp, index=False)
    write_text(out / RESULT_FILE, json.dumps({
        "settings": {"model": wanted.model, "dataset": wanted.dataset, "candidates": list(wanted.candidates),
                     "forward": wanted.forward, "backward": wanted.backward},
        "final": {"relations": list(result.relations), "fit": result.fit_id},
        "steps": int(result.log["step"].max()) if len(result.log) else 0}, indent=2))
