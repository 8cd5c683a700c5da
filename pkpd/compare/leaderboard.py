"""The leaderboard: PSIS-LOO per subject (the unit of prediction) and per record, ELPD differences,
stacking weights, Pareto-k counts, convergence flags and run times, per dataset.

The subject-level ELPD integrates each subject's random effects out before PSIS over draws
(pkpd.compare.integrated: plain PSIS gives Pareto k > 0.7 for most subjects, because a subject's
log-likelihood depends strongly on its own random effects); `loo_method` says which estimate a
row holds ("integrated", or "psis" where integration is impossible: no random effects, correlated
ones, or a model that cannot be rebuilt). A fit whose diagnostics failed (R-hat, ESS, divergences,
BFMI, solver) is ranked but flagged converged = False, every display marks it (never ranked
silently), and it gets no stacking weight (the weights are over the converged fits) unless the
user asks (`weigh_unconverged`, `pkpd compare show --weigh-unconverged`); a fit that failed to run,
or whose PSIS-LOO cannot be computed, is listed with its reason and no rank. Ranking uses the subject-level ELPD (log-likelihood
summed per subject), since new patients, not new samples, are what dose selection predicts.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._files import atomic_path

PARETO_K_BAD = 0.7
INTEGRATED_FILE = "integrated_loglik.npz"  # in a fit folder: each subject's integrated log-likelihood per draw
COLUMNS = ["dataset", "model", "variant", "rank", "elpd_loo", "se", "d_elpd", "d_se", "weight",
           "pareto_k_bad", "loo_method", "mcse_max", "elpd_loo_obs", "se_obs", "pareto_k_bad_obs", "converged",
           "status", "reason", "seconds"]


@dataclass(frozen=True)
class _Loo:
    elpd: float
    se: float
    pareto_k: np.ndarray


def _loo(tree, var_name) -> _Loo:
    """PSIS-LOO of `var_name`. Records whose log-likelihood is the same in every draw (e.g. a
    pre-infusion value below the LLOQ, certain under any parameters) contribute exactly that
    value; PSIS cannot smooth them, so it runs on the others and the constants are added."""
    import arviz as az
    import xarray as xr

    ll = tree["log_likelihood"][var_name]
    dim = [d for d in ll.dims if d not in ("chain", "draw")][0]
    spread = (ll.max(("chain", "draw")) - ll.min(("chain", "draw"))).to_numpy()
    varying = spread > 1e-12
    constant = ll.isel({dim: ~varying}).isel(chain=0, draw=0).to_numpy()
    sub = xr.DataTree.from_dict({"posterior": tree["posterior"].to_dataset(),
                                 "log_likelihood": xr.Dataset({var_name: ll.isel({dim: varying})})})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = az.loo(sub, var_name=var_name, pointwise=True)
    pointwise = np.concatenate([np.asarray(result.elpd_i).ravel(), constant])
    n = len(pointwise)
    return _Loo(float(pointwise.sum()), float(np.sqrt(n * np.var(pointwise))), np.asarray(result.pareto_k).ravel())


def _tree(folder: Path):
    """The posterior tree of a fit folder (the LOO needs nothing else, so no model is rebuilt)."""
    import xarray as xr

    with xr.open_datatree(folder / "posterior.nc", engine="h5netcdf") as opened:
        return opened.load()


def leaderboard(out: str | Path, *, weigh_unconverged: bool = False) -> pd.DataFrame:
    """Build the leaderboard from the fits of a run folder: those of its latest spec (the
    manifest), never a fit the spec no longer names. A damaged result or posterior is listed as
    failed with the reason (re-running the comparison redoes it), never a crash. Fits that failed
    their diagnostics are ranked and flagged, and get no stacking weight unless
    `weigh_unconverged`."""
    from .run import current_fit_ids

    out = Path(out)
    ids = current_fit_ids(out)
    folders = ([out / "fits" / i.replace("/", "__") for i in ids] if ids is not None
               else sorted(p.parent for p in (out / "fits").glob("*/result.json")))
    entries = []
    for folder in folders:
        fit_id = folder.name.replace("__", "/")
        parts = (fit_id.split("/") + ["", "", ""])[:3]
        row = {"dataset": parts[0], "model": parts[1], "variant": parts[2], "status": "failed",
               "reason": "", "seconds": None, "converged": False}
        try:
            result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            entries.append(({**row, "status": "pending", "reason": "not run yet (or killed): run the comparison again"},
                            None, None, None))
            continue
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            entries.append(({**row, "reason": f"result.json is damaged ({type(exc).__name__}): run the "
                                              "comparison again to redo this fit"}, None, None, None))
            continue
        row.update({"dataset": str(result.get("dataset", parts[0])), "model": str(result.get("model", parts[1])),
                    "variant": str(result.get("variant", parts[2])), "status": str(result.get("status")),
                    "reason": str(result.get("reason", "")), "seconds": result.get("seconds"),
                    "converged": bool(result.get("converged", False)), "digest": result.get("digest")})
        tree = result = None
        if row["status"] == "ok":
            try:
                tree = _tree(folder)
            except Exception as exc:  # h5py/xarray raise several types for a damaged file
                row.update(status="failed", converged=False,
                           reason=f"posterior.nc is damaged ({type(exc).__name__}): run the comparison again to redo this fit")
            else:
                from .integrated import load

                if load(folder / INTEGRATED_FILE) is None:  # else the worker's integration is read back
                    result = _fit_result(folder, row)
        entries.append((row, tree, result, folder))
    return _rank(entries, weigh_unconverged)


def _fit_result(folder: Path, row: dict):
    """The FitResult of a fit folder for the integrated LOO, or None with the reason in `row`."""
    from ..fit import FitResult
    from ..fit.run import RunError

    try:
        return FitResult.load(folder)
    except RunError as exc:
        row["reason"] = (row["reason"] + "; " if row["reason"] else "") + f"plain PSIS (model not rebuilt: {exc})"
        return None


def rank(results, dataset: str = "data", *, weigh_unconverged: bool = False) -> pd.DataFrame:
    """The leaderboard of FitResult objects fitted to the same records: {label: result}, the
    label 'model' or 'model/variant'; stacking weights as in `leaderboard`."""
    entries = []
    for label, result in dict(results).items():
        model, _, variant = str(label).partition("/")
        entries.append(({"dataset": dataset, "model": model, "variant": variant or "base", "status": "ok",
                         "reason": "", "seconds": result.tree.attrs.get("total_seconds"),
                         "converged": result.converged}, result.tree, result, None))
    return _rank(entries, weigh_unconverged)


def subject_loo(tree, result=None, cache: Path | None = None, samples: int = 400):
    """(ELPDData with the subject as the unit, method, per-subject Monte Carlo SE of the
    integrated log-likelihood): integrated when `result` allows it (or `cache`, written by the
    fit's worker, holds it), else plain PSIS on y_subject."""
    import arviz as az

    from . import integrated as integration

    stored = integration.load(cache) if cache is not None and cache.is_file() else None
    if stored is not None:
        return integration.loo_of(tree, stored), "integrated", stored.mcse.max(axis=0)
    if result is not None and result.spec.iiv and not (result.spec.correlated and len(result.spec.iiv) > 1):
        loo, integrated = integration.integrated_loo(result, samples=samples)
        if cache is not None:
            integration.save(integrated, cache)
        return loo, "integrated", integrated.mcse.max(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(tree, var_name="y_subject", pointwise=True)
    return loo, "psis", np.full(np.asarray(loo.elpd_i).size, np.nan)


def subject_table(loo, method: str, mcse: np.ndarray) -> pd.DataFrame:
    """One row per subject: its ELPD, Pareto k, Monte Carlo SE and the method that gave it."""
    elpd_i = loo.elpd_i
    subjects = elpd_i.coords[elpd_i.dims[0]].values if elpd_i.dims and elpd_i.dims[0] in elpd_i.coords \
        else np.arange(elpd_i.size)
    return pd.DataFrame({"subject": [str(s) for s in subjects], "elpd_i": np.asarray(elpd_i).ravel(),
                         "pareto_k": np.asarray(loo.pareto_k).ravel(), "mcse": np.asarray(mcse).ravel(),
                         "method": method})


def exact_refits(folder: Path, digest: str | None) -> dict[str, float]:
    """{subject: exact held-out ELPD} of the finished refits of a fit folder (refits/*.json with
    status ok and the fit's digest)."""
    exact = {}
    for path in sorted((folder / "refits").glob("*.json")) if (folder / "refits").is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("status") == "ok" and record.get("digest") == digest:
            exact[str(record.get("subject"))] = float(record["elpd"])
    return exact


def with_refits(loo, folder: Path, digest: str | None):
    """`loo` with the ELPD of each exactly refitted subject (folder/refits/*.json, status ok, the
    fit's digest) in place of its estimate; and the refitted subjects."""
    import copy

    import xarray as xr

    table = subject_table(loo, "", np.zeros(np.asarray(loo.elpd_i).size))
    exact = {s: v for s, v in exact_refits(folder, digest).items() if s in set(table["subject"])}
    if not exact:
        return loo, set()
    values = np.array([exact.get(s, e) for s, e in zip(table["subject"], table["elpd_i"])])
    patched = copy.deepcopy(loo)
    old = np.asarray(loo.elpd_i).ravel()
    patched.elpd_i = xr.DataArray(values.reshape(loo.elpd_i.shape), dims=loo.elpd_i.dims, coords=loo.elpd_i.coords)
    patched.elpd = float(values.sum())
    patched.se = float(loo.se * np.sqrt(values.var() / old.var())) if old.var() > 0 else float(loo.se)
    return patched, set(exact)


def _rank(entries, weigh_unconverged: bool = False) -> pd.DataFrame:
    """Rows (with each fit's posterior tree, or None when it failed) ranked per dataset; the
    stacking weights are over the converged fits only unless `weigh_unconverged`."""
    rows, elpds = [], {}
    for row, tree, result, folder in entries:
        if tree is not None:
            try:
                cache = folder / INTEGRATED_FILE if folder is not None else None
                (subject, method, mcse), record = subject_loo(tree, result, cache), _loo(tree, "y")
            except (ValueError, FloatingPointError) as exc:
                row.update(converged=False, reason=f"PSIS-LOO failed: {exc}")
                rows.append(row)
                continue
            refitted = set()
            if folder is not None:
                subject, refitted = with_refits(subject, folder, row.get("digest"))
            table = subject_table(subject, method, mcse)
            bad = (table["pareto_k"] > PARETO_K_BAD) & ~table["subject"].isin(refitted)
            row.update(elpd_loo=float(subject.elpd), se=float(subject.se), pareto_k_bad=int(bad.sum()),
                       loo_method=method + (f" + {len(refitted)} exact refit(s)" if refitted else ""),
                       mcse_max=float(np.nanmax(mcse)) if np.isfinite(mcse).any() else np.nan,
                       elpd_loo_obs=float(record.elpd), se_obs=float(record.se),
                       pareto_k_bad_obs=int(np.sum(np.asarray(record.pareto_k) > PARETO_K_BAD)))
            elpds.setdefault(row["dataset"], {})[f"{row['model']}/{row['variant']}"] = subject
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for dataset, group in elpds.items():
        ranking = _compare(group)
        for key, r in ranking.iterrows():
            mask = _rows(table, dataset, key)
            table.loc[mask, ["rank", "d_elpd", "d_se"]] = [int(r["rank"]), float(r["elpd_diff"]), float(r["dse"])]
        converged = {key for key in group if bool(table.loc[_rows(table, dataset, key), "converged"].iloc[0])}
        weighed = group if weigh_unconverged else {k: v for k, v in group.items() if k in converged}
        if weighed:
            for key, r in _compare(weighed).iterrows():
                table.loc[_rows(table, dataset, key), "weight"] = float(r["weight"])
        for key in set(group) - set(weighed):  # a fit that failed its diagnostics gets no weight
            mask = _rows(table, dataset, key)
            note = "left out of the stacking weights (not converged)"
            table.loc[mask, "reason"] = [f"{r}; {note}" if isinstance(r, str) and r else note
                                         for r in table.loc[mask, "reason"]]
    order = table.assign(_r=table["rank"].fillna(1e9)).sort_values(["dataset", "_r", "model", "variant"])
    return order.drop(columns="_r").reset_index(drop=True)


def _compare(group: dict) -> pd.DataFrame:
    """az.compare with stacking weights, indexed by fit key; a single fit ranks first with weight 1."""
    import arviz as az

    if len(group) == 1:
        return pd.DataFrame({"rank": [0], "elpd_diff": [0.0], "dse": [0.0], "weight": [1.0]}, index=list(group))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(group, method="stacking")


def _rows(table, dataset, key):
    model, variant = key.split("/", 1)
    return (table["dataset"] == dataset) & (table["model"] == model) & (table["variant"] == variant)


def write(table: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """leaderboard.csv and leaderboard.png (ELPD +- SE per fit, per dataset)."""
    out = Path(out)
    with atomic_path(out / "leaderboard.csv") as tmp:
        table.to_csv(tmp, index=False)
    png = out / "leaderboard.png"
    import matplotlib.pyplot as plt

    fig = figure(table)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out / "leaderboard.csv", png


def figure(table: pd.DataFrame):
    """ELPD +- SE of every ranked fit, one panel per dataset (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = table[table["elpd_loo"].notna()]
    datasets = list(dict.fromkeys(ranked["dataset"])) or ["(none)"]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(7, 1.2 + 0.45 * max(1, len(ranked))), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = ranked[ranked["dataset"] == dataset].iloc[::-1]
        labels = [f"{m}/{v}" + ("" if c else "  (not converged)") for m, v, c in
                  zip(rows["model"], rows["variant"], rows["converged"])]
        y = np.arange(len(rows))
        ax.errorbar(rows["elpd_loo"], y, xerr=rows["se"], fmt="o", color="#2b5d8a", capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlabel("ELPD (LOO with the subject as unit, random effects integrated out)")
        ax.set_title(f"dataset {dataset}", fontsize=9)
    fig.tight_layout()
    return fig
