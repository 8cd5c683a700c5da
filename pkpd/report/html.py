"""One self-contained HTML report of a fit: every figure embedded, no external files.

Sections (ids in SECTIONS): data summary, NCA, parameters, diagnostics, individual fits,
goodness of fit, VPC, model comparison, dose selection, provenance. The report takes objects:
the FitResult, and the posterior-predictive checks, dose selection and comparison leaderboard
when they were already computed (otherwise it computes the first two with defaults).
Every value written into the page is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .._files import write_text
from ..fit.result import FitResult

SECTIONS = {
    "data": "Data summary", "nca": "Non-compartmental analysis", "parameters": "Parameter estimates",
    "diagnostics": "Sampler diagnostics", "individual": "Individual fits", "gof": "Goodness of fit",
    "vpc": "Visual predictive checks", "comparison": "Model comparison", "dose": "Dose selection",
    "trial": "Dose-escalation trial simulation", "provenance": "Provenance",
}

# the metrics the report shows for each kind of analyte (all are in the NCA table)
NCA_METRICS_BY_KIND = {"ck": ("cmax", "tmax", "auc_0_28d"), "cytokine": ("cmax", "tmax"),
                       "bcell": ("aplasia_duration", "nadir"), "ig": ("nadir",), "autoantibody": ("nadir",),
                       "adverse_event": (),
                       "other": ("cmax", "tmax", "auc_0_24h", "auc_inf", "half_life", "auc_tau", "cmin_ss")}

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1300px;padding:1em 2em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-top:.6em} h3{font-size:1em;margin-bottom:.3em}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0} td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.3em 0} .ok{color:#1a7f37} .fail{color:#c62828;font-weight:bold}
nav a{margin-right:1em;font-size:.9em} .note{color:#555;font-size:.9em} pre{font-size:.8em;background:#f7f7f7;padding:.5em}
.rec{background:#eef6ee;border:1px solid #b5d6b5;padding:.5em 1em}
"""


def _image(fig, alt: str) -> str:
    """A matplotlib Figure embedded as PNG data (and closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(figures, prefix: str) -> str:
    return "".join(f"<h3>{html.escape(name.replace('_', ' '))}</h3>{_image(fig, name)}"
                   for name, fig in figures if name.startswith(prefix))


def _data_section(result: FitResult) -> str:
    cohort = result.cohort
    by = cohort.subjects.groupby(["product", "dose_level", "lymphodepletion"], dropna=False).size()
    groups = by.rename("subjects").reset_index()
    return (f"<p>{len(cohort.subjects)} subjects, {len(cohort.observations)} observation records, "
            f"{len(cohort.doses)} dose records (source {html.escape(str(cohort.source))}); times in "
            f"{html.escape(cohort.time_unit)}.</p>" + _table(cohort.summary()) +
            "<h3>Subjects by product, dose level and lymphodepletion</h3>" + _table(groups))


def _nca_section(result: FitResult) -> str:
    from ..nca import nca, summarize

    summary = summarize(nca(result.cohort))
    if summary.empty:
        return '<p class="note">No NCA metric could be computed.</p>'
    kinds = {name: analyte.kind for name, analyte in result.cohort.analytes.items()}
    relevant = summary.apply(lambda r: r["metric"] in NCA_METRICS_BY_KIND.get(kinds.get(r["analyte"]), ()), axis=1)
    summary = summary[relevant]
    cols = [c for c in ("product", "dose_level", "analyte", "metric", "unit", "n", "geo_mean", "geo_cv_percent",
                        "median", "min", "max") if c in summary]
    return '<p class="note">Geometric mean, CV%, median and range by product and dose level ' \
           '(conventions in pkpd.nca).</p>' + _table(summary[cols])


def _diagnostics_section(result: FitResult) -> str:
    items = "".join(f'<li><span class="{"ok" if d.ok else "fail"}">{"ok" if d.ok else "WARN" if d.warning else "FAIL"}'
                    f"</span> {html.escape(d.message)}</li>" for d in result.diagnostics())
    attrs = result.tree.attrs
    settings = json.loads(attrs.get("sampler_settings", "{}"))
    timing = (f"{settings.get('chains')} chains x ({settings.get('tune')} warm-up + {settings.get('draws')} draws); "
              f"compile {float(attrs.get('compile_seconds', 0)):.0f} s, sampling "
              f"{float(attrs.get('sampling_seconds', 0)):.0f} s; {result.steps_per_draw():.0f} leapfrog steps "
              f"per draw; {result.divergences()} divergences")
    verdict = "" if result.converged else ('<p class="fail">Some diagnostics failed: treat the estimates and '
                                           "everything simulated from them as provisional.</p>")
    return f"{verdict}<ul>{items}</ul><p>{html.escape(timing)}</p>"


def _comparison_section(leaderboard: pd.DataFrame | None) -> str:
    from ..compare.leaderboard import figure

    if leaderboard is None:
        return '<p class="note">No model comparison was given (pkpd report --compare DIR).</p>'
    cols = [c for c in ("rank", "model", "variant", "dataset", "elpd_loo", "se", "d_elpd", "d_se", "weight",
                        "pareto_k_bad", "loo_method", "converged", "status", "seconds") if c in leaderboard]
    return ('<p class="note">LOO with the subject as the unit, the random effects of each subject integrated '
            'out before PSIS (loo_method); stacking weights (az.compare) over the converged fits only: a fit '
            'without a weight failed its diagnostics (it is ranked, not weighed).</p>'
            + _table(leaderboard[cols]) + _image(figure(leaderboard), "leaderboard"))


def _dose_section(selection, note: str, cohort) -> str:
    from ..dose import dose_figures

    if selection is None:
        return f'<p class="note">{html.escape(note or "No dose selection was given.")}</p>'
    rec, pta = selection.recommendation, selection.pta
    best = rec.get("recommended")
    if best:
        probs = "; ".join(f"{k}: {v['probability']:.2f} ({v['lower']:.2f}-{v['upper']:.2f})"
                          for k, v in best.get("probabilities", {}).items())
        head = (f'<div class="rec"><b>Recommended: {html.escape(str(best["recommended_dose"]))}, '
                f'{html.escape(str(best["scenario"]))}</b>: the candidate with the lowest total dose with '
                f'P(efficacy) &ge; {html.escape(str(rec["efficacy_level"]))} and every P(safety) &ge; '
                f'{html.escape(str(rec["safety_level"]))}. {html.escape(probs)}</div>')
    else:
        closest = rec.get("closest")
        nearest = "" if not closest else (
            f" Closest to the levels, <b>not meeting them</b>: {html.escape(str(closest['dose']))}, "
            f"{html.escape(str(closest['scenario']))} (shortfalls: " + html.escape(", ".join(
                f"{k} {v:.2f}" for k, v in closest["shortfall"].items() if v > 0)) + "); binding: "
            + html.escape(", ".join(closest["binding_targets"]) or "none alone") + ".")
        head = f'<div class="rec"><b>No candidate dose meets the levels in any scenario.</b>{nearest}</div>'
    per = pd.DataFrame([{"scenario": s, "recommended dose": e.get("recommended_dose") or "none",
                         "note": e.get("reason", "")} for s, e in rec.get("scenarios", {}).items()])
    skipped = rec.get("skipped_targets", [])
    skipped_html = ("<p class='note'>Skipped targets: " + "; ".join(
        html.escape(f"{s['target']}: {s['reason']}") for s in skipped) + "</p>") if skipped else ""
    wide = pta.pivot_table(index=["scenario", "dose"], columns="target", values="probability", sort=False)
    figures = "".join(_image(fig, name) for name, fig in dose_figures(selection, cohort))
    return head + _table(per) + skipped_html + figures + "<h3>Probability of target attainment</h3>" + \
        _table(wide.reset_index(), 3)


def _trial_section(trial) -> str:
    from ..trial.output import trial_figure

    if trial is None:
        return '<p class="note">No trial simulation was given (pkpd trial simulate RUN -o DIR; pkpd report --trial DIR).</p>'
    settings = trial.settings
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in trial.describe().splitlines())
    oc = trial.oc.drop(columns=[c for c in ("design",) if c in trial.oc])
    return (f'<div class="rec"><b>The dose each design would select</b><ul>{lines}</ul></div>'
            f'<p class="note">{html.escape(str(settings.get("trials", "")))} simulated trials per scenario of '
            f'{html.escape(str(settings.get("design", "")))} on doses {html.escape(", ".join(map(str, settings.get("doses", []))))}: '
            f'virtual patients from the fit (parameter uncertainty and between-patient variability), DLT window '
            f'{html.escape(str(settings.get("window_d", "")))} d, first patient of a new dose observed '
            f'{html.escape(str(settings.get("stagger_d", "")))} d, accrual {html.escape(str(settings.get("accrual_per_month", "")))}'
            f'/month, expansion {html.escape(str(settings.get("expansion", "")))} patients. Toxicity model: '
            f'{html.escape(str(settings.get("toxicity", "")))}</p>'
            + _table(oc, 3) + _table(trial.summary, 3) + _image(trial_figure(trial), "trial"))


def _provenance_section(result: FitResult) -> str:
    attrs = result.tree.attrs
    keys = ("model", "model_hash", "data_hash", "data_source", "time_unit", "seed", "sampler", "sampler_settings",
            "spec", "packages")
    rows = pd.DataFrame([{"item": k, "value": str(attrs.get(k, ""))} for k in keys])
    sources = pd.DataFrame([{"module": s.module, "file": s.file, "sha256": s.sha256[:16]}
                            for s in result.model.sources])
    return _table(rows) + ("<h3>Model source files (recorded at fit time)</h3>" + _table(sources)
                           if len(sources) else "")


def write_report(result: FitResult, out: str | Path, *, ppc=None, selection=None,
                 leaderboard: pd.DataFrame | None = None, trial=None, stratify: str = "auto", seed: int = 0) -> Path:
    """Write the report of `result` to `out` (atomically) and return its path.

    ppc: a PosteriorPredictive (default: computed now with `seed`); selection: a DoseSelection
    (default: computed now with the default targets, or left out with the reason when none of
    them can be evaluated); leaderboard: a comparison's leaderboard (pkpd.compare); trial: a
    TrialSimulation (pkpd.trial.simulate_trials)."""
    from ..dose import select_dose
    from ..predict import posterior_predictive
    from ..predict.plots import ppc_figures

    ppc = ppc if ppc is not None else posterior_predictive(result, seed=seed)
    note = ""
    if selection is None:
        try:
            selection = select_dose(result, seed=seed)
        except ValueError as exc:
            note = f"No dose selection: {exc}"
    figures = list(ppc_figures(ppc, stratify))
    parameters = result.parameter_table()
    body = {
        "data": _data_section(result),
        "nca": _nca_section(result),
        "parameters": '<p class="note">Posterior median and 95% interval; IIV as CV%; eta-shrinkage; '
                      "R-hat, bulk and tail ESS.</p>" + _table(parameters),
        "diagnostics": _diagnostics_section(result),
        "individual": _figures(figures, "individual_"),
        "gof": _figures(figures, "gof_"),
        "vpc": _figures(figures, "vpc_") + _figures(figures, "pcvpc_"),
        "comparison": _comparison_section(leaderboard),
        "dose": _dose_section(selection, note, result.cohort),
        "trial": _trial_section(trial),
        "provenance": _provenance_section(result),
    }
    nav = "".join(f'<a href="#{k}">{v}</a>' for k, v in SECTIONS.items())
    sections = "".join(f'<section id="{k}"><h2>{SECTIONS[k]}</h2>{body[k]}</section>' for k in SECTIONS)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"cart-pkpd report: {result.model.name}"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='note'>Generated {stamp} by cart-pkpd {html.escape(_version())}.</p><nav>{nav}</nav>"
            f"{sections}</body></html>")
    return write_text(Path(out), page)


def _version() -> str:
    from .. import __version__

    return __version__
