"""Writing a dose selection: pta.csv, recommendation.json, exposure.csv and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .._files import atomic_path, write_text  # noqa: E402
from ..predict.plots import save  # noqa: E402
from .selection import DoseSelection  # noqa: E402

PTA_COLUMNS = ["dose", "scenario", "target", "probability", "lower", "upper", "kind", "definition",
               "product", "lymphodepletion", "dose_amount", "dose_unit", "dose_total"]


def pta_figure(selection: DoseSelection) -> plt.Figure:
    """Probability of target attainment against dose, one panel per target, one line per scenario."""
    pta, rec = selection.pta, selection.recommendation
    targets = list(dict.fromkeys(pta["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.6 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        t = pta[pta["target"] == target]
        for k, (scenario, g) in enumerate(t.groupby("scenario", sort=False)):
            g = g.sort_values("dose_total")
            color = f"C{k}"
            ax.fill_between(g["dose_total"], g["lower"], g["upper"], color=color, alpha=0.15, lw=0)
            ax.plot(g["dose_total"], g["probability"], "o-", color=color, ms=3, label=scenario)
        kind = t["kind"].iloc[0]
        level = rec["efficacy_level"] if kind == "efficacy" else rec["safety_level"]
        ax.axhline(level, color="k", ls=":", lw=0.8)
        unit = str(t["dose_unit"].iloc[0]).replace("/kg", "")
        ax.set(xscale="log", ylim=(-0.02, 1.02), xlabel=f"total dose ({unit}; per-kg doses at the median weight)",
               ylabel="probability of target attainment", title=f"{kind}: {t['definition'].iloc[0]}")
        ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("PTA against dose: lines = posterior-predictive probability, bands = 90% interval over "
                 "posterior draws; dotted = required level", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def exposure_response_figure(selection: DoseSelection, observed: pd.DataFrame | None = None) -> plt.Figure:
    """Virtual patients' Cmax (of the first exposure analyte: transgene for CAR-T) against each
    target's metric, coloured by dose; the observed subjects' NCA values on top when given
    (columns named like the virtual ones)."""
    patients = selection.patients
    analytes = list(dict.fromkeys(selection.exposure["analyte"])) if len(selection.exposure) else []
    exposure = next((f"{a}_cmax" for a in analytes if f"{a}_cmax" in patients), None)
    prefix = exposure[:-len("cmax")] if exposure else ""
    responses = [c for c in patients.columns if c not in ("scenario", "dose", "dose_amount")
                 and not (prefix and c.startswith(prefix))]
    if exposure is None or not responses:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no exposure-response pair: the targets are on the exposure analyte itself", ha="center")
        ax.axis("off")
        return fig
    fig, axes = plt.subplots(1, len(responses), figsize=(4.6 * len(responses), 3.8), squeeze=False)
    doses = sorted(patients["dose"].unique(), key=lambda d: patients.loc[patients["dose"] == d, "dose_amount"].iloc[0])
    cmap = plt.get_cmap("viridis", max(len(doses), 2))
    for ax, response in zip(axes[0], responses):
        for k, dose in enumerate(doses):
            p = patients[patients["dose"] == dose]
            ax.scatter(p[exposure], p[response], s=5, alpha=0.35, color=cmap(k), label=dose)
        if observed is not None and response in observed and exposure in observed:
            ax.scatter(observed[exposure], observed[response], s=22, color="k", marker="x", label="observed")
        ax.set(xscale="log", xlabel=exposure.replace("_", " "), ylabel=response.replace("_", " "))
    axes[0, 0].legend(fontsize=6, markerscale=2)
    fig.suptitle("Exposure-response: simulated virtual patients (dots, by dose) and observed subjects (x)",
                 fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def observed_metrics(cohort, analytes=None) -> pd.DataFrame:
    """The observed subjects' NCA metrics (of `analytes`, default all) in the virtual patients'
    column names."""
    from ..nca import nca

    table = nca(cohort, [a for a in analytes if a in cohort.analytes] if analytes is not None else None,
                terminal=False)
    wide = {}
    for column in [c for c in table.columns if c in ("cmax", "aplasia_duration", "nadir") or c.startswith("auc_0_")]:
        if table[column].notna().any():
            piv = table.pivot_table(index="subject", columns="analyte", values=column, aggfunc="first")
            wide.update({f"{a}_{column}": piv[a] for a in piv.columns})
    return pd.DataFrame(wide)


def write_dose(selection: DoseSelection, out: str | Path, cohort=None) -> list[Path]:
    """pta.csv, recommendation.json, exposure.csv, patients.csv, pta.png, tradeoff.png,
    exposure_response.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "pta.csv") as tmp:
        selection.pta.reindex(columns=PTA_COLUMNS).to_csv(tmp, index=False)
    with atomic_path(out / "exposure.csv") as tmp:
        selection.exposure.to_csv(tmp, index=False)
    write_text(out / "recommendation.json", json.dumps(selection.recommendation, indent=2, default=_plain))
    with atomic_path(out / "patients.csv") as tmp:
        selection.patients.to_csv(tmp, index=False)
    return [out / "pta.csv", out / "exposure.csv", out / "recommendation.json", out / "patients.csv",
            *(save(fig, out / f"{name}.png") for name, fig in dose_figures(selection, cohort))]


def tradeoff_figure(selection: DoseSelection) -> plt.Figure:
    """The benefit-risk trade-off: per scenario and dose, the smallest efficacy probability
    against the smallest safety probability, with the required levels: a dose in the top-right
    corner meets them all, and the distance to it is what a dose lacks."""
    pta, rec = selection.pta, selection.recommendation
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    kinds = set(pta["kind"])
    for k, (scenario, g) in enumerate(pta.groupby("scenario", sort=False)):
        per_dose = g.groupby("dose", sort=False).apply(
            lambda rows: pd.Series({"total": rows["dose_total"].iloc[0],
                                    "efficacy": rows.loc[rows["kind"] == "efficacy", "probability"].min(),
                                    "safety": rows.loc[rows["kind"] == "safety", "probability"].min()}),
            include_groups=False).sort_values("total")
        x = per_dose["efficacy"] if "efficacy" in kinds else per_dose["total"]
        y = per_dose["safety"] if "safety" in kinds else np.ones(len(per_dose))
        ax.plot(x, y, "o-", color=f"C{k}", ms=4, lw=0.8, label=scenario)
        for i in {0, len(per_dose) - 1}:   # the lowest and highest dose of each line
            ax.annotate(str(per_dose.index[i]).split(" ")[0], (x.iloc[i] if hasattr(x, "iloc") else x[i],
                        y.iloc[i] if hasattr(y, "iloc") else y[i]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axvline(rec["efficacy_level"], color="k", ls=":", lw=0.8)
    ax.axhline(rec["safety_level"], color="k", ls=":", lw=0.8)
    ax.set(xlabel="smallest P(efficacy target) at the dose", ylabel="smallest P(safety target) at the dose",
           title="Benefit-risk trade-off across doses (dotted: required levels)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def dose_figures(selection: DoseSelection, cohort=None):
    """(name, Figure): pta, tradeoff, and exposure_response (with the observed subjects of `cohort`)."""
    yield "pta", pta_figure(selection)
    yield "tradeoff", tradeoff_figure(selection)
    simulated = set(selection.exposure["analyte"]) | {t["analyte"] for t in selection.settings.get("targets", [])}
    yield "exposure_response", exposure_response_figure(
        selection, observed_metrics(cohort, sorted(simulated)) if cohort is not None else None)


def read_dose(folder: str | Path) -> DoseSelection:
    """A dose selection written by `write_dose`, read back (ValueError names what is missing)."""
    folder = Path(folder)
    missing = [n for n in ("pta.csv", "exposure.csv", "recommendation.json", "patients.csv")
               if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a dose-selection folder written by `pkpd dose` (missing "
                         f"{', '.join(missing)})")
    try:
        recommendation = json.loads((folder / "recommendation.json").read_text(encoding="utf-8"))
        _check_recommendation(recommendation)
        selection = DoseSelection(pd.read_csv(folder / "pta.csv"), pd.read_csv(folder / "exposure.csv"),
                                  pd.read_csv(folder / "patients.csv"), recommendation,
                                  recommendation.get("settings", {}))
        _check_tables(selection)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder}: a file of the dose selection cannot be read: {exc}; run `pkpd dose` "
                         "again to rewrite the folder") from None
    return selection


def _check_recommendation(rec) -> None:
    """The shape of recommendation.json as write_dose writes it (ValueError naming the key)."""
    def number(value, key):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"recommendation.json: {key} must be a number, not {value!r}")

    if not isinstance(rec, dict):
        raise ValueError("recommendation.json must hold an object")
    for key in ("efficacy_level", "safety_level"):
        number(rec.get(key), key)
    entries = rec.get("scenarios", {})
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ValueError("recommendation.json: scenarios must map each scenario to its entry")
    best = rec.get("recommended")
    for where, entry in [*((f"scenarios.{k}", e) for k, e in entries.items()), *([("recommended", best)] if best else [])]:
        if not isinstance(entry, dict):
            raise ValueError(f"recommendation.json: {where} must be an object")
        probabilities = entry.get("probabilities", {})
        if not isinstance(probabilities, dict):
            raise ValueError(f"recommendation.json: {where}.probabilities must be an object")
        for name, p in probabilities.items():
            if not isinstance(p, dict):
                raise ValueError(f"recommendation.json: {where}.probabilities.{name} must be an object")
            for key in ("probability", "lower", "upper"):
                number(p.get(key), f"{where}.probabilities.{name}.{key}")
    closest = rec.get("closest")
    if closest is not None:
        if not isinstance(closest, dict) or not isinstance(closest.get("shortfall"), dict) \
                or not isinstance(closest.get("binding_targets"), list):
            raise ValueError("recommendation.json: closest must be an object with shortfall (an object) and "
                             "binding_targets (a list)")
        for name, value in closest["shortfall"].items():
            number(value, f"closest.shortfall.{name}")
    skipped = rec.get("skipped_targets", [])
    if not isinstance(skipped, list) or not all(isinstance(s, dict) and {"target", "reason"} <= set(s) for s in skipped):
        raise ValueError("recommendation.json: skipped_targets must be a list of {target, reason}")


def _check_tables(selection: DoseSelection) -> None:
    missing = [c for c in PTA_COLUMNS[:7] if c not in selection.pta.columns]
    if missing:
        raise ValueError(f"pta.csv lacks the column(s) {', '.join(missing)}")
    if not pd.api.types.is_numeric_dtype(selection.pta["probability"]):
        raise ValueError("pta.csv: the probability column holds values that are not numbers")
    for name, frame, needed in (("exposure.csv", selection.exposure, ("scenario", "dose", "analyte", "metric", "median")),
                                ("patients.csv", selection.patients, ("scenario", "dose"))):
        absent = [c for c in needed if c not in frame.columns]
        if absent:
            raise ValueError(f"{name} lacks the column(s) {', '.join(absent)}")


def _plain(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
