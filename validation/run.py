"""Reproduce published population estimates with pkpd, and recover a simulated CAR-T trial.

    python validation/run.py                 # every case (about 15 minutes on 2 cores)
    python validation/run.py phenobarbital   # one case: warfarin, phenobarbital or cart
    python validation/run.py -o OUT          # where the runs, the CAR-T VPC and report go (validation-out)

Each case is a user's model file fitted to a dataset the way the README teaches (the reading
options on the command line, the model file, pkpd.fit). The table gives, per parameter, the
reference value and where it comes from, pkpd's posterior median with its 95% interval, the
difference, and whether it passes:
- published estimates (warfarin: Monolix; phenobarbital: NONMEM): typical values within 10%,
  inter-individual variability (SD of the log-normal random effect) and residual SDs within 25%;
- the simulated CAR-T trial: the true value inside the 95% interval.
Exit status 1 when a row fails. Sources and licences of the data: validation/README.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import pkpd
from pkpd.models import load

HERE = Path(__file__).resolve().parent
TYPICAL_TOLERANCE, IIV_TOLERANCE = 0.10, 0.25

# Monolix 2021R2 (SAEM) fit of Lixoft's demo project warfarinPKPD: braemd/optiDoseR at commit
# 8c0615ae, inst/warfarinPKPD_project/populationParameters.txt (omega: SD of the random effect)
WARFARIN = "Monolix 2021R2, warfarinPKPD demo project (optiDoseR 8c0615ae, populationParameters.txt)"
WARFARIN_TYPICAL = {"tlag": 0.91995867706076, "ka": 1.40450348840306, "v": 7.89272638535945,
                    "cl": 0.133514721223596, "r0": 96.5324897552223, "kout": 0.0542159433196799,
                    "ic50": 1.15221671864975}
WARFARIN_IMAX = 0.995999660996867
WARFARIN_OMEGA = {"tlag": 0.496952140517677, "ka": 0.881751597861287, "v": 0.218766032680017,
                  "cl": 0.28421354529114, "r0": 0.0532088946841052, "kout": 0.105750448438541,
                  "ic50": 0.449416002842508}
# residual error: warfarin combined1 a1 + b1*f (mg/L), PCA constant a2 (%)
WARFARIN_RESIDUAL = {"sigma_add_warfarin": 0.282490476635365, "sigma_warfarin": 0.0469452827956834,
                     "sigma_add_pca": 3.82332257191302}

# NONMEM 7.4.2 FOCE-I, the 'pheno' example: pharmpy tests/testdata/nonmem/pheno_real.ext (final
# THETA; OMEGA and SIGMA are variances: SD = sqrt); apgar_v is the factor 1 + THETA(3)
PHENO = "NONMEM 7.4.2 FOCE-I, pheno_real.ext (pharmpy test data)"
PHENO_TYPICAL = {"cl": 0.00469555, "v": 0.984258, "apgar_v": 1 + 0.15892}
PHENO_OMEGA = {"cl": math.sqrt(0.0293508), "v": math.sqrt(0.027906)}

# the simulated CAR-T trial: antigen_driven with typical values moved away from the model's
# defaults (the priors' medians), a split first infusion and a re-infusion at day 90
CART_TRUTH = {"rho": 1.5, "fblood": 0.018, "b0": 200.0, "kkills": 0.0025}
CART_OMEGA = {"rho": 0.15, "fblood": 0.6, "b0": 0.5, "kkills": 0.3}
CART_REGIMEN = "3e8 split 10/30/60 q1d + 3e8 at 90d"


def rows_for(case: str, result, typical: dict, omega: dict, source: str, tolerance: bool = True,
             residual: dict | None = None) -> list[dict]:
    """One row per compared parameter: reference, pkpd's median and interval, difference, pass.
    Residual SDs (named as in the parameter table) are held to the variability tolerance."""
    table = result.parameter_table().set_index("name")
    rows = []
    for kind, values in (("typical", typical), ("iiv (SD)", omega), ("residual (SD)", residual or {})):
        for name, reference in values.items():
            key = {"typical": name, "iiv (SD)": f"omega_{name}"}.get(kind, name)
            median, lower, upper = (float(table.loc[key, c]) for c in ("median", "lower", "upper"))
            difference = median / reference - 1
            if tolerance:
                limit = TYPICAL_TOLERANCE if kind == "typical" else IIV_TOLERANCE
                ok = abs(difference) <= limit
                criterion = f"within {limit:.0%}"
            else:
                ok = lower <= reference <= upper
                criterion = "truth in 95% interval"
            rows.append({"case": case, "parameter": name, "kind": kind, "reference": reference, "source": source,
                         "pkpd": median, "lower": lower, "upper": upper, "difference": difference,
                         "criterion": criterion, "pass": bool(ok)})
    return rows


def warfarin(out: Path) -> tuple[list[dict], object]:
    cohort = pkpd.read_cohort(HERE / "warfarin" / "warfarin.csv", time_unit="h", dose_unit="mg",
                              analyte_codes={1: "warfarin", 2: "pca"}, units={"warfarin": "mg/L", "pca": "%"})
    model = load(str(HERE / "warfarin" / "warfarin_pkpd.py"))
    result = pkpd.fit(model, cohort, iiv=list(WARFARIN_OMEGA), fixed_effects=["imax_logit"], chains=4,
                      draws=1000, tune=1000, seed=20261129, target_accept=0.95, progress=False)
    result.save(out / "warfarin")
    rows = rows_for("warfarin", result, WARFARIN_TYPICAL, WARFARIN_OMEGA, WARFARIN, residual=WARFARIN_RESIDUAL)
    # Imax = 1/(1 + exp(-imax_logit)): its posterior median is the transformed median
    logit = result.parameter_table().set_index("name").loc["imax_logit"]
    imax = {k: 1 / (1 + math.exp(-float(logit[k]))) for k in ("median", "lower", "upper")}
    rows.append({"case": "warfarin", "parameter": "imax", "kind": "typical", "reference": WARFARIN_IMAX,
                 "source": WARFARIN, "pkpd": imax["median"], "lower": imax["lower"], "upper": imax["upper"],
                 "difference": imax["median"] / WARFARIN_IMAX - 1, "criterion": "within 10%",
                 "pass": abs(imax["median"] / WARFARIN_IMAX - 1) <= TYPICAL_TOLERANCE})
    return rows, result


def phenobarbital(out: Path) -> tuple[list[dict], object]:
    cohort = pkpd.read_cohort(HERE / "phenobarbital" / "pheno.csv", time_unit="h", dose_unit="mg",
                              analyte_codes={1: "phenobarbital"}, units={"phenobarbital": "mg/L"})
    model = load(str(HERE / "phenobarbital" / "phenobarbital.py"))
    result = pkpd.fit(model, cohort, iiv=["cl", "v"], fixed_effects=["apgar_v"], chains=4, draws=1000, tune=1000,
                      seed=20261129, target_accept=0.9, progress=False)
    result.save(out / "phenobarbital")
    return rows_for("phenobarbital", result, PHENO_TYPICAL, PHENO_OMEGA, PHENO), result


def cart_population(model, n: int, seed: int) -> pd.DataFrame:
    """Individual parameters whose random effects are standardised to mean 0 and SD omega per
    parameter, so that the simulated population has exactly the true typical values and
    variability: the check is then of the engine, not of one draw of 24 subjects (whose own
    geometric mean and SD scatter around the truth by about omega/sqrt(24))."""
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({p.name: np.full(n, CART_TRUTH.get(p.name, p.typical)) for p in model.parameters})
    for name, sd in CART_OMEGA.items():
        z = rng.standard_normal(n)
        out[name] *= np.exp(sd * (z - z.mean()) / z.std(ddof=1))
    out.index = pd.Index([str(i + 1) for i in range(n)], name="subject")
    return out


def cart(out: Path) -> tuple[list[dict], object]:
    from pkpd.predict import posterior_predictive
    from pkpd.predict.plots import write_ppc
    from pkpd.report import write_report
    from pkpd.simulate import parse_regimen, template_cohort, trial_schedule
    from pkpd.simulate.virtual import observe

    model = load("antigen_driven")
    n, seed = 24, 20261129
    params = cart_population(model, n, seed)
    regimen = parse_regimen(CART_REGIMEN)
    ids = list(params.index)
    subjects = pd.DataFrame({"dose_level": CART_REGIMEN, "product": "CD19", "lymphodepletion": True,
                             "disease": "SLE", "weight": 70.0, "age": np.nan, "sex": pd.NA},
                            index=pd.Index(ids, name="subject")).astype({"lymphodepletion": "boolean", "sex": object})
    doses = pd.concat([regimen.doses(s, 70.0, "d") for s in ids], ignore_index=True)
    times = np.unique(np.concatenate([trial_schedule(baseline=True), 90 + trial_schedule()]))
    template = template_cohort(model, subjects, doses, times, ["transgene", "bcells"], source="validation: CAR-T")
    cohort = observe(model, template, params, np.random.default_rng(seed + 1))
    pkpd.write_nonmem(cohort, out / "cart_data.csv")
    cohort = pkpd.read_cohort(out / "cart_data.csv")  # the file a user would have
    result = pkpd.fit(model, cohort, iiv=list(CART_OMEGA), chains=4, draws=1000, tune=1000, seed=seed,
                      target_accept=0.9, progress=False)
    result.save(out / "cart")
    ppc = posterior_predictive(result, seed=1)
    write_ppc(ppc, out / "cart_ppc")
    write_report(result, out / "cart_report.html", ppc=ppc)
    return rows_for("cart (simulated)", result, CART_TRUTH, CART_OMEGA, "simulation truth", tolerance=False), result


CASES = {"warfarin": warfarin, "phenobarbital": phenobarbital, "cart": cart}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", choices=list(CASES), help="cases to run (default: all)")
    parser.add_argument("-o", "--out", type=Path, default=Path("validation-out"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, diagnostics = [], []
    for name in args.cases or list(CASES):
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        case_rows, result = CASES[name](args.out)
        rows += case_rows
        checks = "; ".join(("" if d.ok else "WARN " if d.warning else "FAIL ") + d.message for d in result.diagnostics())
        diagnostics.append(f"{name} ({time.perf_counter() - started:.0f} s): {checks}")
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "validation.csv", index=False)
    shown = table.assign(
        reference=table["reference"].map(lambda v: f"{v:.4g}"),
        pkpd=[f"{m:.4g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in zip(table["pkpd"], table["lower"], table["upper"])],
        difference=table["difference"].map(lambda v: f"{100 * v:+.1f}%"),
        result=np.where(table["pass"], "pass", "FAIL"))
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(shown[["case", "parameter", "kind", "reference", "pkpd", "difference", "criterion", "result"]]
              .to_string(index=False))
    print("\nsources: " + "; ".join(sorted(set(table["source"]))))
    print("diagnostics:\n  " + "\n  ".join(diagnostics))
    failed = int((~table["pass"]).sum())
    print(f"\n{len(table) - failed}/{len(table)} rows pass" + (f"; {failed} FAIL" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
