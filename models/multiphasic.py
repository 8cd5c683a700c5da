"""Multiphasic CAR-T cellular kinetics: expansion, contraction, persistence.

Stein AM, Grupp SA, Levine JE, et al. Tisagenlecleucel model-based cellular kinetic analysis of
chimeric antigen receptor-T cells. CPT Pharmacometrics Syst Pharmacol. 2019;8(5):285-295
(n = 90; Table 1 typical values). Level C = E + M (transgene copies/ug genomic DNA):
    t < Tmax:  dE/dt = rho*E, E(0) = Cmax/foldx, rho = ln(foldx)/Tmax
    t >= Tmax: dE/dt = -alpha*E, dM/dt = FB*(alpha - beta)*E - beta*M
    closed form: C = Cmax*[(1 - FB)*exp(-alpha*tau) + FB*exp(-beta*tau)], tau = t - Tmax
Derived typical figures: doubling time ln2/rho = 0.78 d, initial decline half-life ln2/alpha =
4.3 d, terminal half-life ln2/beta = 217 d, AUC0-28 = 1.72e5 copies*d/ug.

Variants:
- multiphasic_lag: expansion starts after a lag (liso-cel; Ogasawara K, et al. Clin
  Pharmacokinet 2021, n = 261: lag 3.27 d, doubling 0.755 d, Tmax 9.29 d, initial decline
  t1/2 5.0 d, terminal t1/2 352 d). Before the lag the level stays at Cmax/foldx; foldx is set
  so that the doubling time is 0.755 d over Tmax - lag.
- multiphasic_smooth: the switch at Tmax is a logistic gate of width `gate` (0.5 d), blending
  the expansion and contraction lines of log E, so that the log-density is differentiable in
  Tmax (the kink makes the gradient jump there, which hurts gradient-based samplers).

No covariate was retained by Stein et al. (dose, tocilizumab, steroids, lymphodepletion);
covariate effects belong to the population model. Before the infusion (t < 0) the level is 0.
"""

import math

from pkpd.models import LogNormal, Module, Observation, Parameter

STEIN = "Stein et al., CPT:PSP 2019;8:285, Table 1"
OGASAWARA = "Ogasawara et al., Clin Pharmacokinet 2021 (liso-cel, n=261)"


def _parameters(source, cmax=24000.0, tmax=9.3, foldx=3900.0, alpha=0.16, fb=0.0079, beta=0.0032):
    return (
        Parameter("cmax", cmax, "copies/ug", "peak transgene level", source, lower=10, upper=1e7,
                  prior=LogNormal(cmax, 1.5), iiv=0.65),
        Parameter("tmax", tmax, "d", "time of the peak", source, lower=1, upper=60,
                  prior=LogNormal(tmax, 0.4), iiv=0.3),
        Parameter("foldx", foldx, "1", "fold expansion from the initial level to the peak", source,
                  lower=1.5, upper=1e7, prior=LogNormal(foldx, 1.5), iiv=1.0),
        Parameter("alpha", alpha, "1/d", "rate of the initial (effector) decline", source,
                  lower=1e-3, upper=5, prior=LogNormal(alpha, 0.6), iiv=0.5),
        Parameter("fb", fb, "1", "fraction of the peak that persists (memory)", source,
                  lower=1e-6, upper=0.999, prior=LogNormal(fb, 1.0), iiv=0.8),
        Parameter("beta", beta, "1/d", "rate of the persistence-phase decline", source,
                  lower=1e-5, upper=1, prior=LogNormal(beta, 0.7), iiv=0.5),
    )


TRANSGENE = Observation("transgene", lambda t, s, p, c, x, m: s.E + s.M, "copies/ug", error="log",
                        sigma=0.56, source=STEIN + " (residual error 0.56, additive on the ln scale)")


def _decline(tau, p, m):
    return (p.cmax * m.exp(-p.alpha * tau),
            p.cmax * p.fb * (m.exp(-p.beta * tau) - m.exp(-p.alpha * tau)))


def _closed_form(t, p, c, x, m):
    rho = m.log(p.foldx) / p.tmax
    rise = p.cmax / p.foldx * m.exp(rho * t)
    e_fall, m_fall = _decline(t - p.tmax, p, m)
    return {"E": m.where(t < 0, 0, m.where(t < p.tmax, rise, e_fall)),
            "M": m.where(t < p.tmax, 0, m_fall)}


def _initial(p, c, m):
    return {"E": p.cmax / p.foldx, "M": 0}


def _rhs(t, s, p, c, x, m):
    rho = m.log(p.foldx) / p.tmax
    expanding = t < p.tmax
    return {"E": m.where(expanding, rho * s.E, -p.alpha * s.E),
            "M": m.where(expanding, 0, p.fb * (p.alpha - p.beta) * s.E - p.beta * s.M)}


multiphasic = Module(
    name="multiphasic",
    description="Stein 2019 expansion / contraction / persistence of transgene copies (closed form)",
    parameters=_parameters(STEIN),
    initial=_initial, rhs=_rhs, closed_form=_closed_form,
    signals={"car": lambda t, s, p, c, x, m: s.E + s.M},
    observations=(TRANSGENE,),
    references=(STEIN,),
)


# --- lag (liso-cel) ------------------------------------------------------------------------
_LAG, _TMAX_LAG, _DOUBLING_LAG = 3.27, 9.29, 0.755
_FOLDX_LAG = math.exp(math.log(2) / _DOUBLING_LAG * (_TMAX_LAG - _LAG))


def _lag_closed_form(t, p, c, x, m):
    rho = m.log(p.foldx) / (p.tmax - p.lag)
    start = p.cmax / p.foldx
    rise = start * m.exp(rho * (t - p.lag))
    e_fall, m_fall = _decline(t - p.tmax, p, m)
    return {"E": m.where(t < 0, 0, m.where(t < p.lag, start, m.where(t < p.tmax, rise, e_fall))),
            "M": m.where(t < p.tmax, 0, m_fall)}


def _lag_rhs(t, s, p, c, x, m):
    rho = m.log(p.foldx) / (p.tmax - p.lag)
    return {"E": m.where(t < p.lag, 0, m.where(t < p.tmax, rho * s.E, -p.alpha * s.E)),
            "M": m.where(t < p.tmax, 0, p.fb * (p.alpha - p.beta) * s.E - p.beta * s.M)}


multiphasic_lag = Module(
    name="multiphasic_lag",
    description="multiphasic kinetics with a lag before expansion (liso-cel, Ogasawara 2021)",
    parameters=(*_parameters(OGASAWARA, tmax=_TMAX_LAG, foldx=_FOLDX_LAG,
                             alpha=math.log(2) / 5.0, beta=math.log(2) / 352),
                Parameter("lag", _LAG, "d", "delay before expansion starts", OGASAWARA, lower=0.01,
                          upper=8, prior=LogNormal(_LAG, 0.4), iiv=0.3)),
    initial=_initial, rhs=_lag_rhs, closed_form=_lag_closed_form,
    signals={"car": lambda t, s, p, c, x, m: s.E + s.M},
    observations=(TRANSGENE,),
    references=(OGASAWARA, STEIN),
)


# --- smooth gate ---------------------------------------------------------------------------
def _smooth_closed_form(t, p, c, x, m):
    rho = m.log(p.foldx) / p.tmax
    gate = m.sigmoid((t - p.tmax) / p.gate)
    tau = t - p.tmax
    # blend the phases on the log scale (the scale of the likelihood): log E moves from the
    # expansion line rho*tau to the contraction line -alpha*tau around Tmax
    log_e = m.log(p.cmax) + (1 - gate) * rho * tau - gate * p.alpha * tau
    m_fall = p.cmax * p.fb * (m.exp(-p.beta * tau) - m.exp(-p.alpha * tau))
    return {"E": m.where(t < 0, 0, m.exp(log_e)), "M": gate * m_fall}


multiphasic_smooth = Module(
    name="multiphasic_smooth",
    description="multiphasic kinetics with a logistic switch at Tmax (differentiable in Tmax)",
    parameters=(*_parameters(STEIN),
                Parameter("gate", 0.5, "d", "width of the logistic switch at Tmax",
                          "a modelling choice (0.5-1 d)", lower=0.05, upper=3, fixed=True)),
    closed_form=_smooth_closed_form,
    signals={"car": lambda t, s, p, c, x, m: s.E + s.M},
    observations=(TRANSGENE,),
    references=(STEIN,),
)

MODULES = (multiphasic, multiphasic_lag, multiphasic_smooth)
