"""Writing and reading back gives the same cohort: NONMEM <-> ADaM, and as a property."""

import string

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkpd.analytes import CATALOGUE
from pkpd.data import read_cohort, write_adam, write_nonmem


def test_example_round_trip(tmp_path, example_nonmem):
    cohort = read_cohort(example_nonmem)
    write_adam(cohort, tmp_path / "adam.csv")
    via_adam = read_cohort(tmp_path / "adam.csv")
    assert cohort.equals(via_adam), cohort.differences(via_adam)
    write_nonmem(via_adam, tmp_path / "nonmem.csv")
    back = read_cohort(tmp_path / "nonmem.csv")
    assert cohort.equals(back), cohort.differences(back)


def test_writers_leave_no_partial_file(tmp_path, example_nonmem, monkeypatch):
    cohort = read_cohort(example_nonmem)
    target = tmp_path / "out.csv"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    try:
        write_nonmem(cohort, target)
    except OSError:
        pass
    assert list(tmp_path.iterdir()) == []


positive = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False)
names = st.text(string.ascii_uppercase + string.digits + "-", min_size=1, max_size=8)


GRADED = {a.name for a in CATALOGUE if a.kind == "adverse_event"}


@st.composite
def nonmem_tables(draw):
    """A valid NONMEM-style table: 1-4 subjects, catalogue and custom analytes, BLQ records,
    optional covariates, doses in cells, cells/kg, mg or mg/kg (some as infusions, repeated with
    II/ADDL, at steady state or to a named compartment), times in days or hours, optional EVID=2 rows."""
    n_subjects = draw(st.integers(1, 4))
    analytes = draw(st.lists(st.sampled_from([a.name for a in CATALOGUE] + ["CRP"]), min_size=1,
                             max_size=4, unique=True))
    units = {a.name: a.unit for a in CATALOGUE} | {"CRP": "mg/L"}
    ids = draw(st.lists(names, min_size=n_subjects, max_size=n_subjects, unique=True))
    rows = []
    time_unit = draw(st.sampled_from(["DAYS", "HOURS"]))
    amount_unit = draw(st.sampled_from(["cells", "mg"]))
    for number, sid in enumerate(ids, start=1):
        weight = draw(st.one_of(st.none(), st.floats(30, 150).map(lambda w: round(w, 1))))
        per_kg = weight is not None and draw(st.booleans())
        regimen = draw(st.sampled_from([{}, {"RATE": 2.5}, {"DUR": 1.5}, {"II": 12.0, "ADDL": 2},
                                        {"II": 24.0, "SS": 1}, {"CMT": 2}]))
        cov = {"WT": weight, "PRODUCT": draw(st.sampled_from(["CD19", "CD19/BCMA", "CD19/CD20", None])),
               "LD": draw(st.sampled_from([1, 0, None])), "SEX": draw(st.sampled_from(["F", "M", None]))}
        rows.append({"ID": number, "USUBJID": sid, "TIME": 0.0, "TIMEU": time_unit, "AMT": draw(positive),
                     "AMTU": amount_unit + ("/kg" if per_kg else ""), "EVID": 1, "DV": None, "ANALYTE": None,
                     "UNIT": None, "CENS": 0, "LLOQ": None, **cov, **regimen})
        times = draw(st.lists(st.floats(-5, 400, allow_nan=False).map(lambda t: round(t, 3)),
                              min_size=1, max_size=6, unique=True))
        for t in times:
            for analyte in analytes:
                graded = analyte in GRADED   # adverse-event grades: whole numbers, never censored
                lloq = None if graded else draw(st.one_of(st.none(), positive))
                censored = lloq is not None and draw(st.booleans())
                value = draw(st.integers(0, 5)) if graded else lloq if censored else draw(positive)
                if lloq is not None and not censored and value < lloq:
                    value = lloq * 2
                rows.append({"ID": number, "USUBJID": sid, "TIME": t, "TIMEU": time_unit, "AMT": 0.0, "AMTU": None,
                             "EVID": 0, "DV": value,
                             "ANALYTE": analyte, "UNIT": units[analyte], "CENS": int(censored),
                             "LLOQ": lloq, **cov})
        if draw(st.booleans()) and weight is not None:
            rows.append({"ID": number, "USUBJID": sid, "TIME": 30.5, "TIMEU": time_unit, "AMT": 0.0, "EVID": 2,
                         "CENS": 0, **cov, "WT": round(weight * 0.9, 1)})
    return pd.DataFrame(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=nonmem_tables())
def test_valid_cohorts_survive_the_round_trip(tmp_path_factory, table):
    folder = tmp_path_factory.mktemp("rt")
    table.to_csv(folder / "in.csv", index=False, na_rep=".")
    cohort = read_cohort(folder / "in.csv")
    write_adam(cohort, folder / "adam.csv")
    write_nonmem(cohort, folder / "nonmem.csv")
    for path in ("adam.csv", "nonmem.csv"):
        back = read_cohort(folder / path)
        assert cohort.equals(back), (path, cohort.differences(back))
    assert np.isfinite(cohort.doses["absolute"]).all()
    assert cohort.time_unit == {"DAYS": "d", "HOURS": "h"}[table["TIMEU"].iloc[0]]
