"""Figures of the posterior-predictive checks (matplotlib; arviz has no PK panels or VPCs).

Every function returns a Figure; `write_ppc` saves them with the tables behind them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .._files import atomic_path  # noqa: E402
from .ppc import STRATA, PosteriorPredictive  # noqa: E402
from .vpc import PERCENTILES, vpc_statistics  # noqa: E402

BLQ_STYLE = dict(marker="v", facecolors="none", edgecolors="tab:red", s=18, linewidths=0.8)


def _positive_floor(values) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(v.min()) if v.size else 1e-3


def individual_panels(ppc: PosteriorPredictive, analyte: str, max_subjects: int = 48) -> plt.Figure:
    """Observations, IPRED median with its 90% band, PRED and the LLOQ, one panel per subject."""
    records = ppc.records[ppc.records["analyte"] == analyte]
    curves = ppc.curves[ppc.curves["analyte"] == analyte]
    subjects = list(dict.fromkeys(records["subject"]))[:max_subjects]
    cols = min(6, len(subjects))
    rows = math.ceil(len(subjects) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows), sharex=True, sharey=True,
                             squeeze=False)
    floor = _positive_floor(np.r_[records["dv"], records["lloq"]]) / 3
    for ax, subject in zip(axes.ravel(), subjects):
        c = curves[curves["subject"] == subject]
        r = records[records["subject"] == subject]
        ax.fill_between(c["time"], np.maximum(c["ipred_lo"], floor), np.maximum(c["ipred_hi"], floor),
                        color="tab:blue", alpha=0.25, lw=0)
        ax.plot(c["time"], np.maximum(c["ipred"], floor), color="tab:blue", lw=1, label="IPRED")
        ax.plot(c["time"], np.maximum(c["pred"], floor), color="0.3", lw=0.8, ls="--", label="PRED")
        q = r[~r["censored"]]
        ax.scatter(q["time"], q["dv"], s=10, color="k", zorder=3, label="observed")
        b = r[r["censored"]]
        ax.scatter(b["time"], b["lloq"], zorder=3, label="below LLOQ", **BLQ_STYLE)
        if r["lloq"].notna().any():
            ax.axhline(float(r["lloq"].median()), color="tab:red", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{subject} ({r['dose_group'].iloc[0]})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(subjects):]:
        ax.set_visible(False)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=4)
    fig.supxlabel(f"time ({ppc.time_unit})", fontsize=8)
    fig.supylabel(f"{analyte} ({ppc.units.get(analyte, '')})", fontsize=8)
    fig.suptitle(f"Individual fits: {analyte} (IPRED median and {100 * ppc.ci_prob:.0f}% band, PRED dashed, "
                 "LLOQ dotted)", fontsize=9, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def goodness_of_fit(ppc: PosteriorPredictive, analyte: str) -> plt.Figure:
    """DV against PRED and IPRED (log-log), NPD against time and against PRED."""
    r = ppc.records[ppc.records["analyte"] == analyte]
    q, b = r[~r["censored"]], r[r["censored"]]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, col, name in ((axes[0], "pred", "PRED"), (axes[1], "ipred", "IPRED")):
        ax.scatter(q[col], q["dv"], s=8, alpha=0.6, color="k")
        ax.scatter(b[col], b["lloq"], **BLQ_STYLE)
        both = np.r_[q[col], q["dv"], b["lloq"]]
        lo, hi = _positive_floor(both) / 2, np.nanmax(both) * 2 if both.size else 1
        ax.plot([lo, hi], [lo, hi], color="tab:blue", lw=1)
        ax.set(xscale="log", yscale="log", xlabel=name, ylabel="observed", title=f"DV vs {name}")
    for ax, col, xlabel, log in ((axes[2], "time", f"time ({ppc.time_unit})", False), (axes[3], "pred", "PRED", True)):
        ax.scatter(q[col], q["npd"], s=8, alpha=0.6, color="k")
        ax.scatter(b[col], b["npd"], **BLQ_STYLE)
        for y in (-1.96, 0, 1.96):
            ax.axhline(y, color="tab:blue", lw=0.8, ls="-" if y == 0 else "--")
        ax.set(xlabel=xlabel, ylabel="NPD", title=f"NPD vs {xlabel.split(' ')[0]}")
        if log:
            ax.set_xscale("log")
    fig.suptitle(f"Goodness of fit: {analyte} (open triangles: below the LLOQ, at the LLOQ; their NPD "
                 "from a randomised PIT)", fontsize=9, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def vpc_figure(table: pd.DataFrame, analyte: str, unit: str = "", records: pd.DataFrame | None = None,
               prediction_corrected: bool = False, time_unit: str = "d") -> plt.Figure:
    """Observed percentiles over the simulated 90% intervals of the same percentiles, per stratum;
    below, the observed and simulated fractions below the LLOQ."""
    t = table[table["analyte"] == analyte]
    strata = list(dict.fromkeys(t["stratum"]))
    fig, axes = plt.subplots(2, len(strata), figsize=(4.2 * len(strata), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for k, stratum in enumerate(strata):
        s = t[t["stratum"] == stratum].sort_values("time")
        ax, blq = axes[0, k], axes[1, k]
        if records is not None and not prediction_corrected:
            r = records[(records["analyte"] == analyte) & (records.get("_stratum", "all") == stratum)]
            ax.scatter(r.loc[~r["censored"], "nominal_time"], r.loc[~r["censored"], "dv"], s=5, color="0.6")
        for q in PERCENTILES:
            key = f"p{round(100 * q):02d}"
            middle = q == 0.5
            ax.fill_between(s["time"], s[f"sim_{key}_lo"], s[f"sim_{key}_hi"], alpha=0.3, lw=0,
                            color="tab:red" if middle else "tab:blue")
            ax.plot(s["time"], s[f"obs_{key}"], color="k", lw=1.4 if middle else 1, ls="-" if middle else "--")
        if s["lloq"].notna().any():
            ax.axhline(float(s["lloq"].median()), color="tab:red", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_title(str(stratum), fontsize=9)
        blq.fill_between(s["time"], s["sim_blq_lo"], s["sim_blq_hi"], alpha=0.3, color="tab:purple", lw=0)
        blq.plot(s["time"], s["sim_blq_med"], color="tab:purple", lw=1)
        blq.plot(s["time"], s["obs_blq"], "o-", color="k", ms=3, lw=1)
        blq.set_ylim(-0.02, 1.02)
        blq.set_xlabel(f"nominal time ({time_unit})")
    axes[0, 0].set_ylabel(("prediction-corrected " if prediction_corrected else "") + f"{analyte} ({unit})")
    axes[1, 0].set_ylabel("fraction < LLOQ")
    kind = "pcVPC" if prediction_corrected else "VPC"
    fig.suptitle(f"{kind}: {analyte}. Lines: observed 5th/50th/95th percentiles (missing where below "
                 "the LLOQ); bands: 90% intervals of the simulated percentiles; bottom: fraction "
                 "below the LLOQ (observed dots, simulated band)", fontsize=8, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def vpc_tables(ppc: PosteriorPredictive, stratify: str = "auto") -> tuple[str, pd.DataFrame]:
    """(the strata used, the VPC and pcVPC statistics with a `kind` column)."""
    if stratify == "auto":
        stratify = "product" if ppc.records["product"].nunique() > 1 else "all"
    if stratify not in ppc.records.columns:
        raise ValueError(f"stratify {stratify!r} is not one of all, {', '.join(STRATA)}")
    tables = [vpc_statistics(ppc.records, ppc.replicates, ppc.replicate_censored, stratify=stratify,
                             prediction_corrected=pc).assign(kind="pcvpc" if pc else "vpc") for pc in (False, True)]
    return stratify, pd.concat(tables, ignore_index=True)


def ppc_figures(ppc: PosteriorPredictive, stratify: str = "auto"):
    """(name, Figure) of every check: vpc_A, pcvpc_A, individual_A and gof_A per analyte A."""
    stratify, table = vpc_tables(ppc, stratify)
    records = ppc.records.assign(_stratum=ppc.records[stratify].astype(str))
    for kind in ("vpc", "pcvpc"):
        part = table[table["kind"] == kind]
        for analyte in part["analyte"].unique():
            yield f"{kind}_{analyte}", vpc_figure(part, analyte, ppc.units.get(analyte, ""), records, kind == "pcvpc",
                                                  ppc.time_unit)
    for analyte in ppc.records["analyte"].unique():
        yield f"individual_{analyte}", individual_panels(ppc, analyte)
        yield f"gof_{analyte}", goodness_of_fit(ppc, analyte)


def write_ppc(ppc: PosteriorPredictive, out: str | Path, stratify: str = "auto") -> list[Path]:
    """All figures and tables of the checks into `out`; returns the files written.

    stratify: the VPC strata: 'all' (one stratum), product, dose_level, dose_group,
    lymphodepletion or disease; 'auto': product when the cohort has several, else one stratum."""
    _, table = vpc_tables(ppc, stratify)  # checks `stratify` before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    with atomic_path(out / "records.csv") as tmp:
        ppc.records.to_csv(tmp, index=False)
    files.append(out / "records.csv")
    with atomic_path(out / "vpc.csv") as tmp:
        table.to_csv(tmp, index=False)
    files.append(out / "vpc.csv")
    with atomic_path(out / "models.json") as tmp:
        Path(tmp).write_text(json.dumps(ppc.models, indent=1), encoding="utf-8")
    files.append(out / "models.json")
    for name, fig in ppc_figures(ppc, stratify):
        files.append(save(fig, out / f"{name}.png"))
    return files
