"""Writing and reading a trial simulation: oc.csv, summary.csv, trial.json and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .._files import write_text  # noqa: E402
from .simulation import TrialSimulation  # noqa: E402

OC_COLUMNS = ["design", "scenario", "dose_level", "dose", "p_select", "se_select", "mean_n", "se_n", "mean_dlt",
              "se_dlt", "p_dlt_model", "p_dlt_lower", "p_dlt_upper"]
SUMMARY_COLUMNS = ["design", "scenario", "trials", "p_stop_early", "p_no_dose", "mean_n", "se_n", "mean_dlt",
                   "mean_duration_d", "se_duration_d", "expansion_dlt_rate"]


def trial_figure(simulation: TrialSimulation) -> plt.Figure:
    """Per scenario: the probability that each dose is selected (bars, +/- 2 Monte Carlo SE) and
    the model's probability of DLT at each dose (points, 90% interval over trials)."""
    oc = simulation.oc
    scenarios = list(dict.fromkeys(oc["scenario"]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.8 * len(scenarios), 3.6), squeeze=False, sharey=True)
    for ax, scenario in zip(axes[0], scenarios):
        g = oc[oc["scenario"] == scenario]
        x = np.arange(len(g))
        ax.bar(x, g["p_select"], yerr=2 * g["se_select"], color="C0", alpha=0.7, label="P(selected)")
        doses = g[g["dose"] != "none"]
        xd = x[: len(doses)]
        ax.errorbar(xd, doses["p_dlt_model"], yerr=[doses["p_dlt_model"] - doses["p_dlt_lower"],
                                                    doses["p_dlt_upper"] - doses["p_dlt_model"]],
                    fmt="o", color="C3", ms=4, capsize=3, label="model P(DLT)")
        ax.set_xticks(x, list(g["dose"]), fontsize=8)
        ax.set(ylim=(0, 1.02), title=scenario, xlabel="dose level")
        ax.title.set_fontsize(9)
    axes[0, 0].set_ylabel("probability")
    axes[0, 0].legend(fontsize=7)
    design = oc["design"].iloc[0] if len(oc) else ""
    fig.suptitle(f"{design} escalation on virtual patients from the fit: selection probability (bars, "
                 "+/- 2 MC SE) and the model's P(DLT) per dose (90% interval over trials)",
                 fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


def write_trial(simulation: TrialSimulation, out: str | Path) -> list[Path]:
    from ..predict.plots import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "oc.csv", simulation.oc.to_csv(index=False))
    write_text(out / "summary.csv", simulation.summary.to_csv(index=False))
    write_text(out / "trial.json", json.dumps(simulation.settings, indent=2, default=str))
    save(trial_figure(simulation), out / "trial.png")
    return [out / "oc.csv", out / "summary.csv", out / "trial.json", out / "trial.png"]


def read_trial(folder: str | Path) -> TrialSimulation:
    """A trial simulation written by write_trial; ValueError naming the file and the fix."""
    folder = Path(folder)
    missing = [n for n in ("oc.csv", "summary.csv", "trial.json") if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a trial simulation folder (missing {', '.join(missing)}); "
                         "write one with `pkpd trial simulate RUN -o DIR`")
    try:
        oc = pd.read_csv(folder / "oc.csv")
        summary = pd.read_csv(folder / "summary.csv")
        settings = json.loads((folder / "trial.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder}: a file of the trial simulation cannot be read: {exc}; run `pkpd trial simulate` "
                         "again to rewrite the folder") from None
    for name, frame, columns in (("oc.csv", oc, OC_COLUMNS), ("summary.csv", summary, SUMMARY_COLUMNS)):
        absent = [c for c in columns if c not in frame]
        if absent:
            raise ValueError(f"{folder / name}: missing column(s) {', '.join(absent)}; run `pkpd trial simulate` again")
        numeric = [c for c in columns if c not in ("design", "scenario", "dose")]
        bad = [c for c in numeric if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise ValueError(f"{folder / name}: column(s) {', '.join(bad)} must be numbers; run `pkpd trial simulate` again")
    if not isinstance(settings, dict):
        raise ValueError(f"{folder / 'trial.json'} must hold an object; run `pkpd trial simulate` again")
    return TrialSimulation(oc, summary, settings)
