"""Warfarin concentrations after one oral dose: the README's worked example of a model file.

One compartment with first-order absorption after a lag; time in hours, doses in mg.
The data: validation/warfarin/warfarin.csv (O'Reilly et al., J Clin Invest 1963; see
validation/README.md). Priors centred on Holford's review (Clin Pharmacokinet 1986;11:483).
"""

from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter

HOLFORD = "Holford, Clin Pharmacokinet 1986;11:483"


def initial(p, c, m):          # the states before the first dose
    return {"depot": 0, "central": 0}


def rhs(t, s, p, c, x, m):     # t: hours since the subject's first dose
    return {"depot": -p.ka * s.depot,
            "central": p.ka * s.depot - p.cl / p.v * s.central}


warfarin_pk = Module(
    name="warfarin_pk",
    description="one compartment, first-order absorption after a lag",
    parameters=(
        Parameter("ka", 1.0, "1/h", "absorption rate constant", HOLFORD, prior=LogNormal(1.0, 1.0), iiv=0.8),
        Parameter("cl", 0.2, "L/h", "clearance", HOLFORD, prior=LogNormal(0.2, 1.0), iiv=0.3),
        Parameter("v", 10.0, "L", "volume of distribution", HOLFORD, prior=LogNormal(10.0, 1.0), iiv=0.3),
        Parameter("tlag", 1.0, "h", "absorption lag", HOLFORD, prior=LogNormal(1.0, 1.0), iiv=0.5),
    ),
    initial=initial, rhs=rhs,
    time_unit="h", dose_unit="mg",
    dosing=(Dosing("depot", lag=lambda p, c, m: p.tlag),),   # oral doses go to the depot after tlag
    observations=(Observation("warfarin", lambda t, s, p, c, x, m: s.central / p.v, "mg/L",
                              error="combined", sigma=0.1, additive=0.3),),
)
