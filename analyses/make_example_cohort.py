"""Generate the example SLE CAR-T cohort in data/ from the model library.

    python analyses/make_example_cohort.py      # rewrites data/example_*.csv and example_truth.*

Model: antigen_driven+cytokines+immunoglobulins with its default (published or calibrated)
typical values, log-normal inter-individual variability with each parameter's default SD,
each analyte's residual error, and censoring below typical assay LLOQs (pkpd.analytes).

Design, mirroring the registered autoimmune CAR-T trials (CD19/CD20 escalation at 3.0e8-6.0e8 cells,
CD19/BCMA without lymphodepletion, CD19 after Flu/Cy as in Mackensen et al. 2022):
- CD19/CD20 dose escalation at 3.0e8, 4.5e8 and 6.0e8 CAR+ cells after Flu/Cy, 8 per level;
- CD19/BCMA at 1e6, 2e6 and 3e6 cells/kg without lymphodepletion, 4 per level;
- CD19 at 1e6 cells/kg after Flu/Cy, 5 subjects (Mackensen et al. 2022 design);
- diseases SLE, lupus nephritis and systemic sclerosis; weight ~ N(66, 12) kg, 85% female.
Sampling: day -1 (pre-infusion baseline), days 0, 3, ..., 27, then monthly to day 365; actual
times jitter +/- 0.3 d around nominal (the day-0 sample ~1 h after infusion).
Analytes: transgene, IL-2, IL-6, IL-10, IFN-gamma, CD19+ B cells, IgG, IgM, IgA, IgE.

Outputs: data/example_nonmem.csv, data/example_adam.csv (the same cohort), the true
individual parameters data/example_truth.csv, and the population values data/example_truth.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pkpd.data import format_dose, write_adam, write_nonmem
from pkpd.data.cohort import dose_frame
from pkpd.models import load
from pkpd.simulate import draw_parameters, template_cohort, trial_schedule
from pkpd.simulate.virtual import observe

SEED = 20261122
MODEL = "antigen_driven+cytokines+immunoglobulins"
ANALYTES = ["transgene", "il2", "il6", "il10", "ifng", "bcells", "igg", "igm", "iga", "ige"]
ROOT = Path(__file__).resolve().parents[1]

ARMS = [  # product, lymphodepletion, dose, dose unit, n, diseases
    ("CD19/CD20", True, 3.0e8, "cells", 8, ["SLE", "SLE", "lupus nephritis"]),
    ("CD19/CD20", True, 4.5e8, "cells", 8, ["SLE", "SLE", "lupus nephritis"]),
    ("CD19/CD20", True, 6.0e8, "cells", 8, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19/BCMA", False, 1.0e6, "cells/kg", 4, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19/BCMA", False, 2.0e6, "cells/kg", 4, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19/BCMA", False, 3.0e6, "cells/kg", 4, ["SLE", "lupus nephritis", "systemic sclerosis"]),
    ("CD19", True, 1.0e6, "cells/kg", 5, ["SLE"]),
]


def design(rng: np.random.Generator):
    subjects, doses, times = [], [], []
    nominal = trial_schedule(baseline=True)
    k = 0
    for product, ld, dose, unit, n, diseases in ARMS:
        for j in range(n):
            k += 1
            sid = f"SLE-{k:03d}"
            weight = float(np.clip(round(rng.normal(66, 12), 1), 42, 110))
            subjects.append({"subject": sid, "dose_level": format_dose(dose, unit), "product": product,
                             "lymphodepletion": ld, "disease": diseases[j % len(diseases)],
                             "weight": weight, "age": float(rng.integers(18, 66)),
                             "sex": "F" if rng.random() < 0.85 else "M"})
            doses.append({"subject": sid, "time": 0.0, "amount": dose, "unit": unit,
                          "absolute": dose * weight if unit == "cells/kg" else dose, "absolute_unit": "cells"})
            actual = np.where(nominal > 0, nominal + np.round(rng.uniform(-0.3, 0.3, len(nominal)), 2), nominal)
            actual[nominal == 0] = 0.04
            times.append(pd.DataFrame({"subject": sid, "time": actual, "nominal_time": nominal}))
    table = pd.DataFrame(subjects).set_index("subject")
    for col in ("dose_level", "product", "disease", "sex"):
        table[col] = table[col].astype(object)
    table["lymphodepletion"] = table["lymphodepletion"].astype("boolean")
    return table, dose_frame(**pd.DataFrame(doses).to_dict("list")), pd.concat(times, ignore_index=True)


def main() -> None:
    rng = np.random.default_rng(SEED)
    model = load(MODEL)
    subjects, doses, times = design(rng)
    template = template_cohort(model, subjects, doses, times, ANALYTES, source="example cohort")
    params = draw_parameters(model, len(subjects), rng)
    params.index = subjects.index
    cohort = observe(model, template, params, rng)
    obs = cohort.observations
    obs["value"] = obs["value"].map(lambda v: float(f"{v:.4g}"))  # 4 significant digits, as assays report
    data = ROOT / "data"
    write_nonmem(cohort, data / "example_nonmem.csv")
    write_adam(cohort, data / "example_adam.csv")
    varying = [p.name for p in model.parameters if p.iiv]
    params[varying].round(6).to_csv(data / "example_truth.csv")
    truth = {"model": MODEL, "model_hash": model.hash, "seed": SEED,
             "typical": model.typical,
             "omega_sd": {p.name: p.iiv for p in model.parameters if p.iiv},
             "residual": {a: {"error": o.error, "sigma": o.sigma} for a, o in model.observations.items()
                          if a in ANALYTES}}
    (data / "example_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(obs)} observations of {len(subjects)} subjects to {data}")
    print(cohort.summary().to_string(index=False))


if __name__ == "__main__":
    main()
