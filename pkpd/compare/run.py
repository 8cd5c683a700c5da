"""Running the fits of a comparison on dask.distributed: a LocalCluster or an existing scheduler.

The run folder is a small database with a contract:
    spec.toml             the specification of the latest run (its SHA-256 in the manifest)
    manifest.json         the spec's fits only: each one's digest (FitSpec.digest), status
                          (pending, running, ok, failed), reason, seconds, attempts; fits of an
                          earlier spec that the current one dropped are listed under "removed"
                          and left out of the leaderboard
    fits/<id>/            posterior.nc, diagnostics.json, fit.log, loo_subjects.csv (each
                          subject's integrated LOO: elpd_i, pareto_k, mcse), result.json (written
                          last, with the fit's digest); refits/<subject>.json: the exact held-out
                          ELPD of a subject whose Pareto k stayed above 0.7, from a refit without it
    leaderboard.csv/.png  the ranking (pkpd.compare.leaderboard)
    .lock                 held while a run works in the folder (a second run is refused)

Every file is written atomically (temporary name, then rename), so a run killed at any moment,
even by SIGKILL, leaves only complete files. A re-run keeps a fit only when its result.json says
ok, carries the digest of the fit as now specified and its posterior opens; it redoes changed,
unfinished, failed and damaged fits. It removes only pkpd's own temporary files. Each fit runs
single-threaded in its worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .._files import atomic_path, own_temporary_files, write_text
from .leaderboard import INTEGRATED_FILE, PARETO_K_BAD
from .spec import FitSpec, RunSpec, priors_of


SUBJECT_FILE = "loo_subjects.csv"


class RunFolderError(RuntimeError):
    """The run folder cannot be used (held by another run, or not a comparison folder)."""


def fit_directory(out: Path, fit: FitSpec) -> Path:
    return out / "fits" / fit.directory


def read_result(out: Path, fit: FitSpec) -> dict | None:
    path = fit_directory(out, fit) / "result.json"
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) else None


def finished(out: Path, fit: FitSpec) -> dict | None:
    """The result of `fit` when it is finished for the fit as now specified: status ok, the same
    digest, and a posterior that opens; else None (the fit is to be run again)."""
    result = read_result(out, fit)
    if result is None or result.get("status") != "ok" or result.get("digest") != fit.digest:
        return None
    try:
        import xarray as xr

        with xr.open_datatree(fit_directory(out, fit) / "posterior.nc", engine="h5netcdf") as tree:
            tree["posterior"]
    except Exception:  # damaged or missing: h5py and xarray raise several types
        return None
    return result


def _single_threaded() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _fit_data(fit: FitSpec):
    """The model and the cohort of `fit`, the data file checked against the spec's digest."""
    from ..data import read_cohort
    from ..models import load

    model = load(fit.model)
    if fit.dataset.sha256 and hashlib.sha256(fit.dataset.path.read_bytes()).hexdigest() != fit.dataset.sha256:
        raise RuntimeError(f"{fit.dataset.path} changed after the spec was loaded; run the comparison again")
    cohort = read_cohort(fit.dataset.path)
    if fit.dataset.analytes:
        cohort = cohort.select_analytes(fit.dataset.analytes)
    return model, cohort


def _fit_settings(fit: FitSpec) -> dict:
    return dict(chains=fit.chains, draws=fit.draws, tune=fit.tune, seed=fit.seed, iiv=fit.iiv,
                fixed_effects=fit.fixed_effects,
                covariates=fit.covariates, priors=priors_of(fit), progress=False, cores=1,
                target_accept=fit.target_accept)


def run_one(fit: FitSpec, out: str) -> dict:
    """Run one fit in a worker; never raises: failures come back as status 'failed'."""
    _single_threaded()
    folder = fit_directory(Path(out), fit)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = [f"fit {fit.id}: model {fit.model}, variant {fit.variant}, covariates {list(fit.covariates)}, "
           f"seed {fit.seed}, {fit.chains} chains x ({fit.tune} + {fit.draws}), target_accept {fit.target_accept}"]
    result = {"id": fit.id, "dataset": fit.dataset.name, "model": fit.label, "variant": fit.variant,
              "status": "failed", "reason": "", "seconds": None, "seed": fit.seed, "digest": fit.digest}
    for stale in ("result.json", INTEGRATED_FILE):  # nothing of an earlier fit may outlive this one
        (folder / stale).unlink(missing_ok=True)
    try:
        from ..fit import fit as run_fit
        from .leaderboard import subject_loo, subject_table

        model, cohort = _fit_data(fit)
        outcome = run_fit(model, cohort, **_fit_settings(fit))
        outcome.save(folder)
        loo, method, mcse = subject_loo(outcome.tree, outcome, cache=folder / INTEGRATED_FILE, samples=fit.loo_samples)
        with atomic_path(folder / SUBJECT_FILE) as tmp:
            subject_table(loo, method, mcse).to_csv(tmp, index=False)
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


def refit_subject(fit: FitSpec, subject: str, out: str) -> dict:
    """Refit `fit` without `subject` and return the subject's exact held-out ELPD (the log of
    its marginal likelihood averaged over the refit's draws); written to refits/<subject>.json.
    Never raises: a failure comes back with status 'failed'."""
    _single_threaded()
    started = time.perf_counter()
    record = {"subject": subject, "digest": fit.digest, "status": "failed", "reason": ""}
    try:
        import numpy as np
        from scipy.special import logsumexp

        from ..fit import fit as run_fit
        from .integrated import heldout_subject_loglik

        model, cohort = _fit_data(fit)
        others = [s for s in cohort.subject_ids if s != subject]
        # the fit's own settings: a refit must converge as the fit did (with 500 draws per chain
        # instead of 2000 the refits of the packaged comparison stopped at R-hat 1.01-1.02)
        refit = run_fit(model, cohort.select(others), **_fit_settings(fit))
        held = heldout_subject_loglik(refit, cohort.select([subject]))
        values = held.values[:, 0]
        record.update(status="ok", elpd=float(logsumexp(values) - np.log(len(values))),
                      mcse=float(np.max(held.mcse)), converged=bool(refit.converged))
    except Exception as exc:  # recorded, never raised
        record["reason"] = f"{type(exc).__name__}: {exc}"
    record["seconds"] = round(time.perf_counter() - started, 2)
    write_text(refit_path(Path(out), fit, subject), json.dumps(record, indent=2))
    return record


def refit_path(out: Path, fit: FitSpec, subject: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(subject))
    return fit_directory(out, fit) / "refits" / f"{safe}.json"


def unreliable_subjects(out: Path, fit: FitSpec) -> list[str]:
    """Subjects of a finished fit whose integrated Pareto k stayed above 0.7 (the worst
    `max_refits`) that have no exact refit for the fit as now specified."""
    import pandas as pd

    path = fit_directory(out, fit) / SUBJECT_FILE
    try:
        table = pd.read_csv(path, dtype={"subject": str})
    except (OSError, ValueError):
        return []
    todo = []
    worst = table[table["pareto_k"] > PARETO_K_BAD].sort_values("pareto_k", ascending=False)
    for subject in worst["subject"].head(fit.max_refits):
        try:
            done = json.loads(refit_path(out, fit, subject).read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("digest") != fit.digest or done.get("status") != "ok":
            todo.append(subject)
    return todo


def run(spec: RunSpec, out: str | Path, *, scheduler: str | None = None, workers: int | None = None,
        on_result: Callable[[dict, int, int], None] | None = None) -> dict[str, dict]:
    """Run every unfinished fit of `spec` into `out`; return {fit id: result}."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file, not a run folder: give a folder with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists() and not (out / "fits").is_dir():
        raise RunFolderError(f"{out} holds other files and is not a comparison run folder: give a new or "
                             "empty folder with -o")
    (out / "fits").mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _run_locked(spec, out, scheduler, workers, on_result)


def _run_locked(spec, out, scheduler, workers, on_result) -> dict[str, dict]:
    from dask.distributed import Client, LocalCluster, as_completed

    for stale in own_temporary_files(out):  # leftovers of a killed run: only pkpd's own
        stale.unlink(missing_ok=True)
    write_text(out / "spec.toml", spec.text)
    previous = _load_manifest(out)
    manifest: dict[str, dict] = {}
    results: dict[str, dict] = {}
    pending = []
    for fit in spec.fits:
        done = finished(out, fit)
        entry = dict(previous.get(fit.id, {}))
        entry.setdefault("attempts", 0)
        if entry.get("digest") not in (None, fit.digest):
            entry["attempts"] = 0  # a new specification of this fit
        entry.update(digest=fit.digest, status="ok" if done else "pending")
        if done:
            results[fit.id] = done
        else:
            pending.append(fit)
        manifest[fit.id] = entry
    removed = sorted(set(previous) - set(manifest))
    _save_manifest(out, manifest, spec, removed)
    refits_left = sum(len(unreliable_subjects(out, fit)) for fit in spec.fits if fit.id in results)
    if not pending and not refits_left:
        return results
    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        n = workers or max(1, min(max(len(pending), refits_left), os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {}
        for fit in pending:
            manifest[fit.id]["attempts"] += 1
            manifest[fit.id]["status"] = "running"
            futures[client.submit(run_one, fit, str(out.resolve()), key=f"pkpd-fit-{fit.directory}-{time.time_ns()}",
                                  pure=False)] = fit
        _save_manifest(out, manifest, spec, removed)
        for done, future in enumerate(as_completed(futures), start=1):
            fit = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the worker itself died
                result = {"id": fit.id, "status": "failed", "reason": f"worker error: {exc}"}
            results[fit.id] = result
            manifest[fit.id].update(status=result["status"], reason=result.get("reason", ""),
                                    seconds=result.get("seconds"))
            _save_manifest(out, manifest, spec, removed)
            if on_result:
                on_result(result, done, len(pending))
        _run_refits(spec, out, results, client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def _run_refits(spec: RunSpec, out: Path, results: dict, client) -> None:
    """Exact leave-one-subject-out refits, as dask tasks, for the subjects whose integrated
    Pareto k stayed above 0.7 (resumable: a refit done for the fit as now specified is kept)."""
    from dask.distributed import wait

    tasks = [(fit, subject) for fit in spec.fits if results.get(fit.id, {}).get("status") == "ok"
             for subject in unreliable_subjects(out, fit)]
    futures = [client.submit(refit_subject, fit, subject, str(out.resolve()), pure=False,
                             key=f"pkpd-refit-{fit.directory}-{subject}-{time.time_ns()}") for fit, subject in tasks]
    if futures:
        wait(futures)


def _load_manifest(out: Path) -> dict:
    """The fits of the manifest; {} when it is missing or damaged (every fit is then checked
    against its own result.json, so nothing is trusted that cannot be verified)."""
    path = out / "manifest.json"
    if path.exists():
        try:
            fits = json.loads(path.read_text(encoding="utf-8"))["fits"]
            if isinstance(fits, dict) and all(isinstance(v, dict) for v in fits.values()):
                return fits
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            pass
    return {}


def _save_manifest(out: Path, fits: dict, spec: RunSpec, removed: list[str]) -> None:
    write_text(out / "manifest.json", json.dumps({
        "spec": {"name": spec.name, "file": str(spec.source.resolve()),
                 "sha256": hashlib.sha256(spec.text.encode()).hexdigest()},
        "fits": fits, "removed": removed}, indent=2))


def current_fit_ids(out: Path) -> list[str] | None:
    """The fit ids of the latest spec run in `out` (None for a folder without a manifest)."""
    fits = _load_manifest(Path(out))
    return list(fits) if fits else None


@contextmanager
def _locked(out: Path):
    """Hold out/.lock for the run; refuse when a live process holds it, take it over from a dead one."""
    lock = out / ".lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text(errors="replace").strip() if lock.exists() else ""
            host, _, pid = holder.partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)  # left by a killed run on this machine
                continue
            raise RunFolderError(f"another comparison run ({holder or 'unknown process'}) is working in {out}; "
                                 f"wait for it to finish, or delete {lock} if that run is dead") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
