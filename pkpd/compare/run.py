"""Running the fits of a comparison on dask.distributed: a LocalCluster or an existing scheduler.

The run folder is a small database with a contract:
    spec.toml             the specification of the latest run (its SHA-256 in the manifest)
    manifest.json         the spec's fits only: each one's digest (FitSpec.digest), status
                          (pending, running, ok, failed), reason, seconds, attempts; fits of an
                          earlier spec that the current one dropped are listed under "removed"
                          and left out of the leaderboard
    fits/<id>/            posterior.nc, diagnostics.json, fit.log, result.json (written last,
                          with the fit's digest)
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

from .._files import own_temporary_files, write_text
from .spec import FitSpec, RunSpec, priors_of


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
              "status": "failed", "reason": "", "seconds": None, "seed": fit.seed, "digest": fit.digest}
    (folder / "result.json").unlink(missing_ok=True)  # a stale result must not outlive a refit
    try:
        from ..data import read_cohort
        from ..fit import fit as run_fit
        from ..models import load

        model = load(fit.model)
        if fit.dataset.sha256 and hashlib.sha256(fit.dataset.path.read_bytes()).hexdigest() != fit.dataset.sha256:
            raise RuntimeError(f"{fit.dataset.path} changed after the spec was loaded; run the comparison again")
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
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


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
