"""Running the fits of a comparison on dask.distributed: a LocalCluster or an existing scheduler.

The run folder:
    spec.toml             the specification as run
    manifest.json         every fit: status (pending, ok, failed), reason, seconds, attempts
    fits/<id>/            posterior.nc, diagnostics.json, fit.log, result.json (written last)
    leaderboard.csv/.png  the ranking (pkpd.compare.leaderboard)

Every file is written atomically (temporary name, then rename), so a run killed at any moment,
even by SIGKILL, leaves only complete files; re-running skips finished fits (result.json with
status ok) and redoes unfinished or failed ones. Each fit runs single-threaded in its worker.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .._files import write_text
from .spec import FitSpec, RunSpec, priors_of


def fit_directory(out: Path, fit: FitSpec) -> Path:
    return out / "fits" / fit.directory


def read_result(out: Path, fit: FitSpec) -> dict | None:
    path = fit_directory(out, fit) / "result.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_one(fit: FitSpec, out: str) -> dict:
    """Run one fit in a worker; never raises: failures come back as status 'failed'."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    folder = fit_directory(Path(out), fit)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = [f"fit {fit.id}: model {fit.model}, variant {fit.variant}, covariates {list(fit.covariates)}, "
           f"seed {fit.seed}, {fit.chains} chains x ({fit.tune} + {fit.draws}), target_accept {fit.target_accept}"]
    result = {"id": fit.id, "dataset": fit.dataset.name, "model": fit.label, "variant": fit.variant,
              "status": "failed", "reason": "", "seconds": None, "seed": fit.seed}
    try:
        from ..data import read_cohort
        from ..fit import fit as run_fit
        from ..models import load

        model = load(fit.model)
        cohort = read_cohort(fit.dataset.path)
        if fit.dataset.analytes:
            cohort = cohort.select_analytes(fit.dataset.analytes)
        outcome = run_fit(model, cohort, chains=fit.chains, draws=fit.draws, tune=fit.tune, seed=fit.seed,
                          iiv=fit.iiv, covariates=fit.covariates, priors=priors_of(fit), progress=False, cores=1,
                          target_accept=fit.target_accept)
        outcome.save(folder)
        diagnostics = [asdict(d) for d in outcome.diagnostics()]
        divergences = outcome.divergences()
        converged = outcome.converged
        result.update(converged=converged, divergences=divergences, steps_per_draw=outcome.steps_per_draw(),
                      diagnostics=[d["message"] for d in diagnostics if not d["ok"]])
        if divergences > fit.max_divergences:
            result["reason"] = f"{divergences} divergent transitions (limit {fit.max_divergences})"
        else:
            result["status"] = "ok"
        log.append("diagnostics: " + "; ".join(d["message"] for d in diagnostics))
    except Exception as exc:  # recorded, never raised: one failing fit does not stop the others
        result["reason"] = f"{type(exc).__name__}: {exc}"
        log.append(traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - started, 2)
    log.append(f"{result['status']} after {result['seconds']} s {result['reason']}")
    write_text(folder / "fit.log", "\n".join(log) + "\n")
    write_text(folder / "result.json", json.dumps(result, indent=2))  # last: marks the fit finished
    return result


def run(spec: RunSpec, out: str | Path, *, scheduler: str | None = None, workers: int | None = None,
        on_result: Callable[[dict, int, int], None] | None = None) -> dict[str, dict]:
    """Run every unfinished fit of `spec` into `out`; return {fit id: result}."""
    from dask.distributed import Client, LocalCluster, as_completed

    out = Path(out)
    (out / "fits").mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp"):  # leftovers of a killed run
        stale.unlink(missing_ok=True)
    write_text(out / "spec.toml", spec.text)
    manifest = _load_manifest(out)
    results: dict[str, dict] = {}
    pending = []
    for fit in spec.fits:
        done = read_result(out, fit)
        if done is not None and done.get("status") == "ok":
            results[fit.id] = done
        else:
            pending.append(fit)
        entry = manifest.setdefault(fit.id, {"status": "pending", "attempts": 0})
        entry["status"] = "ok" if fit.id in results else "pending"
    _save_manifest(out, manifest)
    if not pending:
        return results
    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        n = workers or max(1, min(len(pending), os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {}
        for fit in pending:
            manifest[fit.id]["attempts"] += 1
            manifest[fit.id]["status"] = "running"
            futures[client.submit(run_one, fit, str(out.resolve()), key=f"pkpd-fit-{fit.directory}-{time.time_ns()}",
                                  pure=False)] = fit
        _save_manifest(out, manifest)
        for done, future in enumerate(as_completed(futures), start=1):
            fit = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the worker itself died
                result = {"id": fit.id, "status": "failed", "reason": f"worker error: {exc}"}
            results[fit.id] = result
            manifest[fit.id].update(status=result["status"], reason=result.get("reason", ""),
                                    seconds=result.get("seconds"))
            _save_manifest(out, manifest)
            if on_result:
                on_result(result, done, len(pending))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def _load_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    if path.exists():
        try:
            return json.loads(path.read_text())["fits"]
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    return {}


def _save_manifest(out: Path, fits: dict) -> None:
    write_text(out / "manifest.json", json.dumps({"fits": fits}, indent=2))
