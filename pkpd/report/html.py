"""One self-contained HTML report of a fit run: every figure embedded, no external files.

Sections (ids in SECTIONS): data summary, NCA, parameters, diagnostics, individual fits,
goodness of fit, VPC, model comparison, dose selection, provenance. The report reads the
folders written by `write_ppc`, `write_dose` and a comparison run, so it recomputes nothing
that is already on disk.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .._files import write_text
from ..fit.run import Run

SECTIONS = {
    "data": "Data summary", "nca": "Non-compartmental analysis", "parameters": "Parameter estimates",
    "diagnostics": "Sampler diagnostics", "individual": "Individual fits", "gof": "Goodness of fit",
    "vpc": "Visual predictive checks", "comparison": "Model comparison", "dose": "Dose selection",
    "provenance": "Provenance",
}

# the metrics the report shows for each kind of analyte (all are in the NCA files)
NCA_METRICS_BY_KIND = {"ck": ("cmax", "tmax", "auc_0_28"), "cytokine": ("cmax", "tmax"),
                       "bcell": ("aplasia_duration", "nadir"), "ig": ("nadir",), "autoantibody": ("nadir",)}

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1300px;padding:1em 2em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-top:.6em} h3{font-size:1em;margin-bottom:.3em}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0} td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.3em 0} .ok{color:#1a7f37} .fail{color:#c62828;font-weight:bold}
nav a{margin-right:1em;font-size:.9em} .note{color:#555;font-size:.9em} pre{font-size:.8em;background:#f7f7f7;padding:.5em}
.rec{background:#eef6ee;border:1px solid #b5d6b5;padding:.5em 1em}
"""


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
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


def _images(folder: Path | None, prefix: str, what: str) -> str:
    if folder is None:
        return f'<p class="note">No {what} given.</p>'
    files = sorted(folder.glob(f"{prefix}*.png"))
    if not files:
        return f'<p class="note">No {what} figures in {html.escape(str(folder))}.</p>'
    return "".join(f"<h3>{html.escape(f.stem.replace('_', ' '))}</h3>{_image(f, f.stem)}" for f in files)


def _data_section(run: Run) -> str:
    cohort = run.cohort
    by = cohort.subjects.groupby(["product", "dose_level", "lymphodepletion"], dropna=False).size()
    groups = by.rename("subjects").reset_index()
    return (f"<p>{len(cohort.subjects)} subjects, {len(cohort.observations)} observation records "
            f"(source {html.escape(str(cohort.source))}).</p>" + _table(cohort.summary()) +
            "<h3>Subjects by product, dose level and lymphodepletion</h3>" + _table(groups))


def _nca_section(run: Run) -> str:
    from ..nca import nca, summarize

    summary = summarize(nca(run.cohort), metrics=["cmax", "tmax", "auc_0_28", "aplasia_duration", "nadir"])
    kinds = {name: analyte.kind for name, analyte in run.cohort.analytes.items()}
    relevant = summary.apply(lambda r: r["metric"] in NCA_METRICS_BY_KIND.get(kinds.get(r["analyte"]), ()), axis=1)
    summary = summary[relevant]
    cols = [c for c in ("product", "dose_level", "analyte", "metric", "unit", "n", "geo_mean", "geo_cv_percent",
                        "median", "min", "max") if c in summary]
    return '<p class="note">Geometric mean, CV%, median and range by product and dose level ' \
           '(conventions in pkpd.nca).</p>' + _table(summary[cols])


def _diagnostics_section(run: Run) -> str:
    result = run.result
    items = "".join(f'<li><span class="{"ok" if d.ok else "fail"}">{"ok" if d.ok else "FAIL"}</span> '
                    f"{html.escape(d.message)}</li>" for d in result.diagnostics())
    attrs = result.tree.attrs
    settings = json.loads(attrs.get("sampler_settings", "{}"))
    timing = (f"{settings.get('chains')} chains x ({settings.get('tune')} warm-up + {settings.get('draws')} draws); "
              f"compile {float(attrs.get('compile_seconds', 0)):.0f} s, sampling "
              f"{float(attrs.get('sampling_seconds', 0)):.0f} s; {result.steps_per_draw():.0f} leapfrog steps "
              f"per draw; {result.divergences()} divergences")
    verdict = "" if result.converged else ('<p class="fail">Some diagnostics failed: treat the estimates and '
                                           "everything simulated from them as provisional.</p>")
    return f"{verdict}<ul>{items}</ul><p>{html.escape(timing)}</p>"


def _comparison_section(compare_dir: Path | None) -> str:
    if compare_dir is None:
        return '<p class="note">No model comparison was given (pkpd report --compare DIR).</p>'
    table_path = compare_dir / "leaderboard.csv"
    if not table_path.is_file():
        return f'<p class="note">{html.escape(str(compare_dir))} has no leaderboard.csv.</p>'
    table = pd.read_csv(table_path)
    cols = [c for c in ("rank", "model", "dataset", "elpd_loo", "se", "d_elpd", "d_se", "weight", "pareto_k_bad",
                        "converged", "status", "seconds") if c in table]
    png = compare_dir / "leaderboard.png"
    return ('<p class="note">PSIS-LOO with the subject as the unit; stacking weights (az.compare).</p>'
            + _table(table[cols]) + (_image(png, "leaderboard") if png.is_file() else ""))


def _dose_section(dose_dir: Path | None) -> str:
    if dose_dir is None or not (dose_dir / "pta.csv").is_file():
        return '<p class="note">No dose selection was given.</p>'
    rec = json.loads((dose_dir / "recommendation.json").read_text())
    pta = pd.read_csv(dose_dir / "pta.csv")
    best = rec.get("recommended")
    if best:
        probs = "; ".join(f"{k}: {v['probability']:.2f} ({v['lower']:.2f}-{v['upper']:.2f})"
                          for k, v in best.get("probabilities", {}).items())
        head = (f'<div class="rec"><b>Recommended: {html.escape(str(best["recommended_dose"]))}, '
                f'{html.escape(best["scenario"])}</b>: the lowest candidate dose with P(efficacy) &ge; '
                f'{rec["efficacy_level"]} and every P(safety) &ge; {rec["safety_level"]}. {html.escape(probs)}</div>')
    else:
        head = '<div class="rec"><b>No candidate dose meets the levels in any scenario.</b></div>'
    per = pd.DataFrame([{"scenario": s, "recommended dose": e.get("recommended_dose") or "none",
                         "note": e.get("reason", "")} for s, e in rec.get("scenarios", {}).items()])
    skipped = rec.get("skipped_targets", [])
    skipped_html = ("<p class='note'>Skipped targets: " + "; ".join(
        html.escape(f"{s['target']}: {s['reason']}") for s in skipped) + "</p>") if skipped else ""
    wide = pta.pivot_table(index=["scenario", "dose"], columns="target", values="probability", sort=False)
    figures = "".join(_image(dose_dir / name, name) for name in ("pta.png", "exposure_response.png")
                      if (dose_dir / name).is_file())
    return head + _table(per) + skipped_html + figures + "<h3>Probability of target attainment</h3>" + \
        _table(wide.reset_index(), 3)


def _provenance_section(run: Run) -> str:
    attrs = run.result.tree.attrs
    keys = ("model", "model_hash", "data_hash", "data_source", "seed", "sampler", "sampler_settings", "spec",
            "packages")
    rows = pd.DataFrame([{"item": k, "value": str(attrs.get(k, ""))} for k in keys])
    return _table(rows) + f"<p class='note'>Run folder: {html.escape(str(run.folder))}</p>"


def write_report(run: Run, out: str | Path, *, ppc_dir: Path | None = None, dose_dir: Path | None = None,
                 compare_dir: Path | None = None) -> Path:
    """Write the report to `out` (atomically) and return its path."""
    parameters = run.result.parameter_table()
    body = {
        "data": _data_section(run),
        "nca": _nca_section(run),
        "parameters": '<p class="note">Posterior median and 95% interval; IIV as CV%; eta-shrinkage; '
                      "R-hat, bulk and tail ESS.</p>" + _table(parameters),
        "diagnostics": _diagnostics_section(run),
        "individual": _images(ppc_dir, "individual_", "posterior-predictive check"),
        "gof": _images(ppc_dir, "gof_", "posterior-predictive check"),
        "vpc": _images(ppc_dir, "vpc_", "posterior-predictive check") + _images(ppc_dir, "pcvpc_", "pcVPC"),
        "comparison": _comparison_section(compare_dir),
        "dose": _dose_section(dose_dir),
        "provenance": _provenance_section(run),
    }
    nav = "".join(f'<a href="#{k}">{v}</a>' for k, v in SECTIONS.items())
    sections = "".join(f'<section id="{k}"><h2>{SECTIONS[k]}</h2>{body[k]}</section>' for k in SECTIONS)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"cart-pkpd report: {run.model.name}"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='note'>Generated {stamp} by cart-pkpd {html.escape(_version())}.</p><nav>{nav}</nav>"
            f"{sections}</body></html>")
    return write_text(Path(out), page)


def _version() -> str:
    from .. import __version__

    return __version__
