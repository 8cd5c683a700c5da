"""Generate the example SLE CAR-T cohort in data/ (NONMEM style and ADaM style).

    python analyses/make_example_cohort.py            # rewrites data/example_*.csv

The design mirrors the registered autoimmune CAR-T trials (../shared/reference/science.md,
section 1): a CD19/CD20 dose escalation at 3.0e8, 4.5e8 and 6.0e8 CAR+ cells after Flu/Cy
(8 subjects per level); a CD19/BCMA arm at 1e6, 2e6 and 3e6 cells/kg without lymphodepletion
(4 per level); a CD19 arm at 1e6 cells/kg after Flu/Cy (5 subjects). Sampling: a pre-infusion
baseline (day -1), days 0, 3, ..., 27, then monthly to day 365.

Curves (closed forms, true per-subject values written to data/example_truth.csv):
- transgene: Stein et al. 2019 multiphasic model (Table 1 typical values: foldx 3,900, Tmax 9.3 d,
  Cmax 24,000 copies/ug, alpha 0.16/d, FB 0.0079, beta 0.0032/d), Cmax scaled by dose^0.5 and
  lowered 60% without lymphodepletion; log-normal IIV; LLOQ 50 copies/ug.
- B cells: depletion within days, logistic recovery centred so that aplasia (<= 5 cells/uL)
  lasts about 110 d (Mackensen et al. 2022: 110 +/- 32 d); LLOQ 1 cells/uL.
- immunoglobulins: IgG falls ~17.5% with CD19-directed products and ~40% with CD19/BCMA
  (science.md 3.2), IgM/IgA/IgE by isotype; slow partial recovery.
- cytokines: baseline plus a Gaussian bump shortly before the transgene peak, height scaled by
  the subject's Cmax; LLOQ 1.5 pg/mL (IL-2: 2 pg/mL).
Residual error is log-normal (proportional). Values are rounded to 4 significant digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pkpd.data import read_cohort, write_adam

SEED = 20261122
ROOT = Path(__file__).resolve().parents[1]
MONTHS = [round(30.4167 * k) for k in range(1, 13)]
NOMINAL = [-1.0, 0.0, *range(3, 28, 3), *MONTHS]

ARMS = [  # product, lymphodepletion, dose, dose unit, n, diseases
    ("CD19/CD20", True, 3.0e8, "cells", 8, ["SLE", "SLE", "lupus nephritis"]),
    ("CD19/CD20", True, 4.5e8, "cells", 8, ["SLE", "SLE", "lupus nephritis"]),
    ("CD19/CD20", True, 6.0e8, "cells", 8, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19/BCMA", False, 1.0e6, "cells/kg", 4, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19/BCMA", False, 2.0e6, "cells/kg", 4, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19/BCMA", False, 3.0e6, "cells/kg", 4, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19", True, 1.0e6, "cells/kg", 5, ["SLE"]),
]

LLOQ = {"transgene": 50.0, "il2": 2.0, "il6": 1.5, "il10": 1.5, "ifng": 1.5, "bcells": 1.0,
        "igg": 0.5, "igm": 0.05, "iga": 0.05, "ige": 2.0}
UNITS = {"transgene": "copies/ug", "il2": "pg/mL", "il6": "pg/mL", "il10": "pg/mL",
         "ifng": "pg/mL", "bcells": "cells/uL", "igg": "g/L", "igm": "g/L", "iga": "g/L",
         "ige": "IU/mL"}


def stein(t, cmax, tmax, foldx=3900.0, alpha=0.16, fb=0.0079, beta=0.0032):
    """Stein et al. 2019 multiphasic transgene curve (closed form)."""
    t = np.asarray(t, float)
    rho = np.log(foldx) / tmax
    rise = cmax / foldx * np.exp(rho * np.clip(t, 0, None))
    tau = np.clip(t - tmax, 0, None)
    fall = cmax * ((1 - fb) * np.exp(-alpha * tau) + fb * np.exp(-beta * tau))
    return np.where(t < 0, 0.0, np.where(t < tmax, rise, fall))


def subject_truth(rng, product, ld, dose_cells):
    cmax = 24000.0 * (dose_cells / 4.5e8) ** 0.5 * (1.0 if ld else 0.4) * np.exp(0.5 * rng.normal())
    return {
        "cmax": cmax,
        "tmax": 9.3 * np.exp(0.2 * rng.normal()),
        "alpha": 0.16 * np.exp(0.25 * rng.normal()),
        "b0": 150.0 * np.exp(0.45 * rng.normal()),
        "t_recovery": (130.0 if ld else 115.0) + 20.0 * rng.normal(),
        "igg0": 10.0 * np.exp(0.2 * rng.normal()),
        "igg_drop": (0.40 if "BCMA" in product else 0.175) * np.exp(0.2 * rng.normal()),
        "igm0": 1.2 * np.exp(0.3 * rng.normal()),
        "iga0": 2.0 * np.exp(0.3 * rng.normal()),
        "ige0": 60.0 * np.exp(0.8 * rng.normal()),
    }


def curves(t, p):
    t = np.asarray(t, float)
    post = np.clip(t, 0, None)
    level = stein(t, p["cmax"], p["tmax"], alpha=p["alpha"])
    drive = (p["cmax"] / 24000.0) ** 0.7
    bump = np.exp(-(((t - (p["tmax"] - 2.0)) / 3.0) ** 2)) * (t >= 0)
    recovery = 1.0 / (1.0 + np.exp(-(post - p["t_recovery"]) / 8.0))
    depletion = np.where(t < 0, 1.0, np.exp(-1.2 * post))
    onset = 1 - np.exp(-post / 20.0)
    waning = np.exp(-np.clip(post - 120.0, 0, None) / 250.0)
    deep = p["igg_drop"] / 0.175  # BCMA targeting also removes long-lived plasma cells
    return {
        "transgene": level,
        "il6": 3.0 + 40.0 * drive * bump,
        "ifng": 4.0 + 25.0 * drive * bump,
        "il10": 2.0 + 12.0 * drive * bump,
        "il2": 1.0 + 4.0 * drive * bump,
        "bcells": p["b0"] * np.maximum(depletion, recovery),
        "igg": p["igg0"] * (1 - p["igg_drop"] * onset * waning),
        "igm": p["igm0"] * (1 - min(0.95, 0.5 * deep) * (1 - np.exp(-post / 8.0)) * waning),
        "iga": p["iga0"] * (1 - min(0.9, 0.3 * deep) * (1 - np.exp(-post / 10.0)) * waning),
        "ige": p["ige0"] * (1 - min(0.9, 0.4 * deep) * (1 - np.exp(-post / 5.0)) * waning),
    }


def round_sig(x, digits=4):
    x = np.asarray(x, float)
    with np.errstate(divide="ignore"):
        scale = np.where(x > 0, 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(x)))), 1.0)
    return np.round(x * scale) / scale


def build(seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, truth, k = [], [], 0
    for product, ld, dose, dose_unit, n, diseases in ARMS:
        for j in range(n):
            k += 1
            subject = f"SLE-{k:03d}"
            weight = float(np.clip(round(rng.normal(66, 12), 1), 42, 110))
            cells = dose * weight if dose_unit == "cells/kg" else dose
            p = subject_truth(rng, product, ld, cells)
            truth.append({"subject": subject, **{key: round(float(v), 6) for key, v in p.items()}})
            cov = {"PRODUCT": product, "LD": int(ld), "DISEASE": diseases[j % len(diseases)],
                   "WT": weight, "AGE": int(rng.integers(18, 66)),
                   "SEX": "F" if rng.random() < 0.85 else "M"}
            actual = np.array([t if t <= 0 else t + round(rng.uniform(-0.3, 0.3), 2) for t in NOMINAL])
            actual[NOMINAL.index(0.0)] = 0.04  # the day-0 sample is drawn ~1 h after infusion
            rows.append({"USUBJID": subject, "TIME": 0.0, "NTIME": 0.0, "AMT": dose,
                         "AMTU": dose_unit, "EVID": 1, "MDV": 1, "ANALYTE": ".", "DV": ".",
                         "UNIT": ".", "CENS": 0, "LLOQ": ".", **cov})
            true = curves(actual, p)
            for analyte, values in true.items():
                noise = {"transgene": 0.35, "bcells": 0.25}.get(analyte, 0.08 if analyte.startswith("ig") else 0.2)
                observed = round_sig(values * np.exp(noise * rng.normal(size=values.size)))
                for t_act, t_nom, y in zip(actual, NOMINAL, observed):
                    if analyte == "transgene" and t_nom < 0:
                        y = 0.0  # no transgene before infusion
                    blq = y < LLOQ[analyte]
                    rows.append({"USUBJID": subject, "TIME": t_act, "NTIME": t_nom, "AMT": 0,
                                 "AMTU": ".", "EVID": 0, "MDV": 0, "ANALYTE": analyte,
                                 "DV": LLOQ[analyte] if blq else y, "UNIT": UNITS[analyte],
                                 "CENS": int(blq), "LLOQ": LLOQ[analyte], **cov})
    frame = pd.DataFrame(rows)
    frame.insert(0, "ID", frame["USUBJID"].str[-3:].astype(int))
    frame = frame.sort_values(["ID", "TIME", "EVID"], kind="stable")
    return frame, pd.DataFrame(truth)


def main() -> None:
    frame, truth = build()
    data = ROOT / "data"
    frame.to_csv(data / "example_nonmem.csv", index=False)
    truth.to_csv(data / "example_truth.csv", index=False)
    cohort = read_cohort(data / "example_nonmem.csv")
    write_adam(cohort, data / "example_adam.csv")
    print(f"wrote {len(frame)} rows for {cohort.subjects.shape[0]} subjects to {data}")


if __name__ == "__main__":
    main()
