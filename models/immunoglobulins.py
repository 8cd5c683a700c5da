"""Immunoglobulins from short- and long-lived plasma cells, and anti-dsDNA autoantibodies.

Short-lived plasma cells SL are fed by B cells (signal `bcell_fraction`) and partly CD19+, so
every product (CD19, CD19/CD20, CD19/BCMA) removes them; long-lived plasma cells LL are CD19-
negative and BCMA+, so only BCMA targeting kills them (Mackensen et al., Nat Med 2022;
Wang et al., Ann Rheum Dis 2024). Both are fractions of
baseline:

    dSL/dt = ksl*(b - SL) - kkillsl*E*SL
    dLL/dt = kll*(b - LL) - BCMA*kkillll*E*LL
    dIg/dt = ln2/t12 * (ig0*(SL + phi*LL)/(1 + phi) - Ig)      for IgG, IgM, IgA, IgE, anti-dsDNA

with b = B/B0 and E the effector CAR-T cells. At baseline (b = 1) every state is at steady state.
phi is the share of an isotype's production coming from long-lived plasma cells relative to
short-lived ones: IgG falls ~17.5% after CD19 CAR-T while vaccine titres stay stable
(Mackensen et al., Nat Med 2022), which gives phi_igg ~ 10; IgM is mostly short-lived-plasma-cell derived;
anti-dsDNA is a short-lived-plasma-cell product (autoantibodies negative by 3 months, Wang et al.,
Ann Rheum Dis 2024). Half-lives [R, textbook values]: IgG 21 d, IgA 6 d, IgM 5 d, IgE 2.5 d.
Baselines: IgG 11.4 g/L and proportional error 8.6% (Valenzuela et al., CPT:PSP 2025); IgM, IgA
within adult ranges [R]; IgE and anti-dsDNA typical of active SLE [R].
"""

import math

from pkpd.models import LogNormal, Module, Observation, Parameter

SCIENCE = "textbook immunoglobulin turnover [R]"
VALENZUELA = "Valenzuela et al., CPT:PSP 2025 (IgG baseline 11.4 g/L, net elimination t1/2 ~19 d)"
ISOTYPES = {  # name: (baseline, unit, half-life d, phi, error sd, source)
    "igg": (11.4, "g/L", 21.0, 10.0, 0.086, VALENZUELA),
    "igm": (1.2, "g/L", 5.0, 0.5, 0.10, SCIENCE + " [R]"),
    "iga": (2.5, "g/L", 6.0, 3.0, 0.10, SCIENCE + " [R]"),
    "ige": (50.0, "IU/mL", 2.5, 1.0, 0.15, SCIENCE + " [R]"),
    "anti_dsdna": (200.0, "IU/mL", 21.0, 0.1, 0.25, "Wang et al., Ann Rheum Dis 2024 [R]"),
}


def _parameters(isotypes=tuple(ISOTYPES)):
    out = [
        Parameter("ksl", math.log(2) / 4.0, "1/d", "turnover of short-lived plasma cells (t1/2 4 d)",
                  SCIENCE + " (t1/2 days)", lower=1e-3, upper=5, prior=LogNormal(math.log(2) / 4.0, 0.5)),
        Parameter("kll", math.log(2) / 700.0, "1/d", "turnover of long-lived plasma cells (t1/2 ~2 y)",
                  SCIENCE + " (t1/2 months-years)", lower=1e-5, upper=0.5,
                  prior=LogNormal(math.log(2) / 700.0, 0.7)),
        Parameter("kkillsl", 0.001, "uL/cell/d", "killing of (partly CD19+) short-lived plasma cells",
                  "calibrated", lower=1e-7, upper=1, prior=LogNormal(0.001, 1.0)),
        Parameter("kkillll", 2.5e-4, "uL/cell/d", "killing of long-lived plasma cells (BCMA targeting)",
                  "calibrated: CD19/BCMA lowers IgG clearly more than CD19 (Wang et al., Ann Rheum Dis 2024)",
                  lower=1e-7, upper=1, prior=LogNormal(2.5e-4, 1.0), iiv=0.4),
    ]
    for name in isotypes:
        base, unit, half_life, phi, _, source = ISOTYPES[name]
        out += [
            Parameter(f"{name}0", base, unit, f"baseline {name}", source, lower=base / 1e3,
                      upper=base * 1e3, prior=LogNormal(base, 0.5), iiv=0.3),
            Parameter(f"phi_{name}", phi, "1", f"long- vs short-lived plasma-cell share of {name}",
                      SCIENCE, lower=1e-3, upper=1e3, prior=LogNormal(phi, 0.7)),
            Parameter(f"kdeg_{name}", math.log(2) / half_life, "1/d",
                      f"elimination of {name} (t1/2 {half_life} d)", SCIENCE + " [R]", fixed=True),
        ]
    return tuple(out)


def _module(name, description, isotypes):
    def initial(p, c, m):
        return {"SL": 1, "LL": 1, **{ig: p[f"{ig}0"] for ig in isotypes}}

    def rhs(t, s, p, c, x, m):
        out = {
            "SL": p.ksl * (x.bcell_fraction - s.SL) - p.kkillsl * x.effector * s.SL,
            "LL": p.kll * (x.bcell_fraction - s.LL) - c.bcma * p.kkillll * x.effector * s.LL,
        }
        for ig in isotypes:
            phi = p[f"phi_{ig}"]
            production = p[f"{ig}0"] * (s.SL + phi * s.LL) / (1 + phi)
            out[ig] = p[f"kdeg_{ig}"] * (production - s[ig])
        return out

    return Module(
        name=name,
        kind="pd",
        description=description,
        parameters=_parameters(isotypes),
        initial=initial,
        rhs=rhs,
        requires=("bcell_fraction", "effector"),
        observations=tuple(_observation(ig, ISOTYPES[ig][1], ISOTYPES[ig][4]) for ig in isotypes),
        references=(SCIENCE, VALENZUELA),
    )


def _observation(name, unit, sd):
    error = "log" if name == "anti_dsdna" else "proportional"
    return Observation(name, lambda t, s, p, c, x, m: s[name], unit, error=error, sigma=sd,
                       source=VALENZUELA if name == "igg" else SCIENCE + " [R]")


immunoglobulins = _module("immunoglobulins", "short/long-lived plasma cells; IgG, IgM, IgA, IgE and anti-dsDNA",
                          tuple(ISOTYPES))
# IgG alone (the safety read-out of dose selection): 3 states instead of 7 when the other
# isotypes are not fitted
igg = _module("igg", "short/long-lived plasma cells and IgG", ("igg",))

MODULES = (immunoglobulins, igg)
