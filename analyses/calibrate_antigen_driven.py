"""Calibrate the unpublished constants of the antigen_driven model, and print its behaviour.

    python analyses/calibrate_antigen_driven.py          # print the figures of the defaults
    python analyses/calibrate_antigen_driven.py --fit    # re-run the calibration

Targets for the typical CD19 patient (70 kg, 1e6 cells/kg = 7e7 CAR+ cells, Flu/Cy):
- B cells below 5 cells/uL at ~day 5 (within 7 days; Mackensen et al., Nat Med 2022);
- B cells back above 5 cells/uL at day 110 (110 +/- 32 d, same source);
- >= 80% of baseline by day 365 (naive B-cell reconstitution);
- transgene peak ~15,000 copies/ug near day 8 (Tmax 7-14 d; peaks centred on oncology values,
  Stein et al. 2019).
The exhaustion rate kexh is held at 0.02/d so that returning B cells cannot re-trigger expansion.
Calibrated: kkill, kb, fblood, kkills, ks (Nelder-Mead on log scale).
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.optimize import minimize

from pkpd.models import load
from pkpd.simulate.solve import covariate_matrix, parameter_matrix, solve

MODEL = load("antigen_driven")
GRID = np.concatenate([np.arange(0, 30, 0.25), np.arange(30, 366, 1.0)])
CALIBRATED = ["kkill", "kb", "fblood", "kkills", "ks"]


def behaviour(values: dict, dose: float = 7e7, ld: int = 1) -> dict:
    P = parameter_matrix(MODEL, values, 1)
    C = covariate_matrix(1, dose=dose, ld=ld, weight=70)
    s = solve(MODEL, GRID, P, C)
    tg, b = s.values["transgene"][:, 0], s.values["bcells"][:, 0]
    below = b <= 5
    onset = GRID[np.argmax(below)] if below.any() else np.inf
    after = np.flatnonzero((GRID > onset) & ~below)
    back = GRID[after[0]] if after.size else np.inf
    return {"cmax": tg.max(), "tmax": GRID[tg.argmax()], "aplasia_onset": onset, "b_back": back,
            "b365_fraction": b[-1] / P[MODEL.parameter_names.index("b0"), 0]}


def loss(x: np.ndarray) -> float:
    try:
        r = behaviour(dict(zip(CALIBRATED, np.exp(x))))
    except Exception:
        return 1e6
    return (np.log(r["cmax"] / 1.5e4) ** 2 + ((r["tmax"] - 8.0) / 1.5) ** 2
            + ((r["aplasia_onset"] - 5.0) / 0.5) ** 2 + ((r["b_back"] - 110) / 10) ** 2
            + 10 * max(0.0, 0.8 - r["b365_fraction"]) ** 2)


def main() -> None:
    values = {}
    if "--fit" in sys.argv:
        x0 = np.log([MODEL.parameter(n).typical for n in CALIBRATED])
        result = minimize(loss, x0, method="Nelder-Mead", options={"maxiter": 600, "xatol": 1e-3})
        values = dict(zip(CALIBRATED, np.exp(result.x)))
        print("calibrated:", {k: float(f"{v:.3g}") for k, v in values.items()})
    for label, dose, ld in [("CD19 1e6/kg (70 kg), Flu/Cy", 7e7, 1), ("same, no lymphodepletion", 7e7, 0),
                            ("3.0e8 cells, Flu/Cy", 3e8, 1), ("6.0e8 cells, Flu/Cy", 6e8, 1)]:
        r = behaviour(values, dose, ld)
        print(f"{label:30s} Cmax {r['cmax']:7.0f} copies/ug at {r['tmax']:5.2f} d; B <= 5/uL from "
              f"{r['aplasia_onset']:5.2f} d to {r['b_back']:6.1f} d; B(365)/B0 {r['b365_fraction']:.2f}")


if __name__ == "__main__":
    main()
