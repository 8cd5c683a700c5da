"""Messy and hostile input: every mistake gets a located message, nothing is silently lost.

One test per kind of failure found by trying malformed files, options, specs and model files as
a new user would; each asserts the location (line, column or option) and the wording."""

import multiprocessing
import re

import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.data import check_file, read_cohort
from pkpd.units import UnitError, parse_unit

from .conftest import ROOT, VALID_NONMEM, replace_line

runner = CliRunner()


def findings(path, rule, **options):
    report = check_file(path, **options).report
    return [f for f in report.findings if f.rule == rule]


# --- numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("line, column, old, new, wording", [
    (4, "DV", "5000", "inf", "'inf' is not a finite number"),
    (4, "DV", "5000", "-Infinity", "is not a finite number"),
    (4, "TIME", ",3,", ",1e999,", "'1e999' is not a finite number"),
    (3, "AMT", "3e8", "inf", "'inf' is not a finite number"),
    (2, "WT", ",70,", ",nan,", "'nan' is not a number"),
    (2, "WT", ",70,", ",inf,", "'inf' is not a finite number"),
])
def test_non_finite_numbers_are_located_errors(write, line, column, old, new, wording):
    path = write(replace_line(VALID_NONMEM, line, old, new))
    result = check_file(path)
    assert result.cohort is None
    errors = [f for f in result.report.errors if f.line == line and f.column == column]
    assert errors and wording in errors[0].message, result.report.format()


def test_a_value_that_overflows_after_unit_conversion_is_an_error(write):
    text = VALID_NONMEM.replace("ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD",
                                "ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD,TIMEU")
    text = "\n".join(line + (",WEEKS" if i == 3 else ",DAYS" if i else "")
                     for i, line in enumerate(text.splitlines())) + "\n"
    path = write(replace_line(text, 4, ",3,", ",1e308,"))  # 1e308 weeks overflow in days
    found = findings(path, "non-finite")
    assert found and found[0].line == 4 and found[0].column == "TIME"
    assert "overflows to infinity after unit conversion" in found[0].message
    per_kg = VALID_NONMEM.replace("ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD",
                                  "ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD,AMTU")
    per_kg = "\n".join(line + (",cells/kg" if i else "") for i, line in enumerate(per_kg.splitlines())) + "\n"
    found = findings(write(replace_line(per_kg, 3, "3e8", "1e308"), "kg.csv"), "non-finite")
    assert found and found[0].line == 3 and "body weight overflows" in found[0].message


# --- rows never dropped, merged or mislocated -------------------------------------------------
def test_a_subject_id_beginning_with_hash_is_data_with_a_warning_or_a_noted_comment(write):
    text = VALID_NONMEM.replace("\n2,", "\n#2,")
    path = write(text)
    cohort = read_cohort(path)
    assert "#2" in cohort.subject_ids  # nothing dropped
    warning, = findings(path, "hash-row")
    assert warning.severity == "warning" and warning.line == 7 and "--comment" in warning.fix
    skipped = check_file(path, comment="#")
    assert skipped.cohort.subject_ids == ["1"]
    note, = [f for f in skipped.report.findings if f.rule == "comment-row"]
    assert note.severity == "note" and "4 row(s)" in note.message and "7, 8, 9, 10" in note.message


def test_a_non_ascii_analyte_name_is_not_merged_into_a_catalogue_analyte(write):
    text = VALID_NONMEM.replace("ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD",
                                "ID,TIME,DV,AMT,EVID,MDV,ANALYTE,UNIT,CENS,LLOQ,WT,PRODUCT,LD")
    rows = text.splitlines()
    out = [rows[0]]
    for row in rows[1:]:
        cells = row.split(",")
        analyte, unit = {"1": ("transgene", "copies/ug"), "7": ("bcells", "cells/uL"), ".": (".", ".")}[cells[6]]
        out.append(",".join(cells[:6] + [analyte, unit] + cells[7:]))
    out[3] = out[3].replace("transgene", "transgené")
    path = write("\n".join(out) + "\n")
    cohort = read_cohort(path)
    assert (cohort.observations["analyte"] == "transgené").sum() == 1  # kept apart, not merged
    warning, = findings(path, "analyte-near-miss")
    assert warning.line == 4 and "not as transgene" in warning.message


def test_line_numbers_count_the_lines_of_a_quoted_multiline_cell(write):
    text = VALID_NONMEM.replace("PRODUCT,LD\n", "PRODUCT,LD,NOTE\n", 1)
    rows = text.splitlines()
    rows = [rows[0]] + [r + (',"first line\nsecond line"' if i == 1 else ",") for i, r in enumerate(rows[1:], start=1)]
    text = "\n".join(rows) + "\n"  # the record of line 2 spans lines 2-3
    path = write(replace_line(text, 10, "2,3,50,", "2,3,fifty,"))  # the file's line 10 (record 8)
    error, = findings(path, "non-numeric")
    assert error.line == 10 and error.column == "DV"
    note, = findings(path, "multiline-cell")
    assert note.line == 2 and "lines 2-3" in note.message


def test_an_invisible_line_separator_is_named_where_it_is(write):
    path = write(replace_line(VALID_NONMEM, 5, "20000", "20000\u2028"))
    result = check_file(path)
    assert result.cohort is None
    error, = [f for f in result.report.errors if f.rule == "invisible-character"]
    assert (error.line, error.column) == (5, "DV") and "U+2028 (LINE SEPARATOR)" in error.message
    assert not [f for f in result.report.errors if f.rule == "ragged-row"]


def test_trailing_empty_columns_of_a_spreadsheet_export_are_ignored_with_a_note(write):
    padded = "\n".join(row + ",," for row in VALID_NONMEM.splitlines()) + "\n"
    result = check_file(write(padded))
    assert result.cohort is not None and result.cohort.equals(read_cohort(write(VALID_NONMEM, "plain.csv")))
    assert [f for f in result.report.findings if f.rule == "empty-columns"][0].severity == "note"
    with_values = replace_line(padded, 3, "CD19,1,,", "CD19,1,x,")
    error, = findings(write(with_values, "values.csv"), "header")
    assert "line 3 has values under them" in error.message
    middle = VALID_NONMEM.replace("DVID,CENS", "DVID,,CENS", 1)
    error, = findings(write(middle, "middle.csv"), "header")
    assert "column 8 has no name" in error.message


def test_blank_rows_of_empty_cells_are_skipped_with_a_note(write):
    rows = VALID_NONMEM.splitlines()
    text = "\n".join(rows[:4] + [",,,,,,,,,,,", ""] + rows[4:]) + "\n"
    result = check_file(write(text))
    assert result.cohort is not None
    note, = [f for f in result.report.findings if f.rule == "blank-row"]
    assert note.line == 5 and "1 row(s)" in note.message


# --- units: a grammar, never arithmetic -------------------------------------------------------
def _parse_in_child(text, queue):
    try:
        parse_unit(text)
        queue.put("parsed")
    except UnitError as exc:
        queue.put(f"UnitError: {exc}")


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
@pytest.mark.parametrize("text, wording", [
    ("cells/uL*2**3", "a power must be a small whole number after a unit name"),
    ("2**2**2**2**2**99", "a power must be a small whole number"),
    ("9*9*9*9", "at most one scale number"),
    ("mg/L; import os", "unexpected"),
    ("(" * 30 + "mg" + ")" * 30, "nested parentheses"),
    ("mg" * 40, "longer than 64 characters"),
])
def test_unit_strings_are_parsed_by_a_grammar_and_never_evaluated(text, wording):
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_parse_in_child, args=(text, queue))
    child.start()
    child.join(20)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, f"parsing {text!r} did not return"
    answer = queue.get(timeout=5)
    assert answer.startswith("UnitError") and wording in answer


def test_a_damaged_pint_cache_falls_back_to_the_definitions(tmp_path, monkeypatch):
    """pint's disk cache (parsed unit definitions) is written without locking: a file another
    process left half-written must not stop pkpd from starting."""
    from pkpd import units

    monkeypatch.setenv("PKPD_CACHE", str(tmp_path))
    assert units._registry()("mg/L").to("ug/mL").magnitude == pytest.approx(1.0)
    cached = list((tmp_path / "pint").glob("*.pickle"))
    assert cached
    for path in cached:
        path.write_bytes(path.read_bytes()[:40])
    assert units._registry()("ng/mL").to("ug/L").magnitude == pytest.approx(1.0)
    assert not (tmp_path / "pint").exists()                    # removed: the next start writes it again
    units._registry()
    assert list((tmp_path / "pint").glob("*.pickle"))


def test_ordinary_units_still_parse():
    for text, magnitude in (("copies/µg gDNA", 1), ("10^9/L", 1e9), ("mg/(kg*h)", 1), ("m^2", 1), ("%", 1),
                            ("ng·h/mL", 1), ("1/h", 1)):
        assert float(parse_unit(text).magnitude) == pytest.approx(magnitude)


def test_a_unit_cell_with_arithmetic_is_a_located_error(write):
    text = VALID_NONMEM.replace("ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD",
                                "ID,TIME,DV,AMT,EVID,MDV,DVID,CENS,LLOQ,WT,PRODUCT,LD,UNIT")
    rows = text.splitlines()
    units = {"1": "copies/ug", "7": "cells/uL", ".": "."}
    rows = [rows[0]] + [r + "," + units[r.split(",")[6]] for r in rows[1:]]
    rows[3] = rows[3].replace("copies/ug", "copies/ug*10**10")
    error, = [f for f in check_file(write("\n".join(rows) + "\n")).report.errors]
    assert (error.line, error.column) == (4, "UNIT") and "power must be a small whole number" in error.message


# --- command-line options, specs, model files, run folders -------------------------------------
SPEC = """
[run]
chains = 2
draws = 20
tune = 20
{run}

[[datasets]]
name = "d"
path = "data.csv"

[[models]]
model = "{model}"
{models}
"""


@pytest.fixture
def spec_folder(tmp_path):
    (tmp_path / "data.csv").write_text(VALID_NONMEM)
    return tmp_path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.mark.parametrize("args, wording", [
    (["--chains", "-1"], "Invalid value for '--chains'"),
    (["--draws", "0"], "Invalid value for '--draws'"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
])
def test_sampler_options_out_of_range_are_usage_errors_before_any_work(spec_folder, args, wording):
    out = spec_folder / "run"
    result = invoke("fit", "multiphasic", spec_folder / "data.csv", "-o", out, *args)
    assert result.exit_code == 2 and wording in said(result)
    assert not out.exists()


def test_an_existing_folder_as_the_nca_output_is_refused(spec_folder):
    result = invoke("nca", spec_folder / "data.csv", "-o", spec_folder)
    assert result.exit_code == 2 and "is a folder" in said(result)


def test_a_data_error_exits_1_and_a_usage_error_2(spec_folder, write):
    bad = write(replace_line(VALID_NONMEM, 4, "5000", "inf"), "bad.csv")
    result = invoke("nca", bad, "-o", spec_folder / "nca.csv")
    assert result.exit_code == 1 and "bad.csv:4" in said(result) and "not a finite number" in said(result)
    assert not (spec_folder / "nca.csv").exists()
    assert invoke("nca", bad, "-o", spec_folder / "nca.csv", "--time-unit", "fortnights").exit_code in (1, 2)


@pytest.mark.parametrize("body, wording", [
    (SPEC.format(run='max_divergences = "many"', model="multiphasic", models=""),
     "run.max_divergences must be an integer from 0 to 1000000000, not 'many'"),
    (SPEC.format(run="name = 3", model="multiphasic", models=""), "run.name must be a name of letters"),
    (SPEC.format(run="", model="multiphasic", models="variants = { x = ['cmax~ldx'] }"),
     "models[1].variants.x: dataset d has no covariate 'ldx'"),
    (SPEC.format(run="", model="multiphasic", models="variants = { x = ['cmax~weight:quadratic'] }"),
     "unknown form 'quadratic'"),
    (SPEC.format(run="", model="multiphasic", models="iiv = 'cmax'"), "models[1].iiv must be a list"),
    (SPEC.format(run="", model="multiphasic", models="iiv = []"), "models[1].iiv is empty"),
    (SPEC.format(run="", model="multiphasic", models="priors = 3"), "models[1].priors must be a table"),
    (SPEC.format(run="", model="multiphasic", models="priors = [1, 2]"), "models[1].priors must be a table"),
])
def test_spec_mistakes_are_located_before_any_fit(spec_folder, body, wording):
    from pkpd.compare import SpecError, load_spec

    path = spec_folder / "spec.toml"
    path.write_text(body)
    with pytest.raises(SpecError, match=re.escape(wording)):
        load_spec(path)
    result = invoke("compare", path)
    assert result.exit_code == 2 and not (spec_folder / "spec-run").exists()


def test_a_spec_that_is_not_utf8_is_a_located_error(spec_folder):
    path = spec_folder / "latin.toml"
    path.write_bytes(SPEC.format(run="# d\xe9j\xe0", model="multiphasic", models="").encode("latin-1"))
    result = invoke("compare", path)
    assert result.exit_code == 2 and "latin.toml" in said(result) and "not UTF-8" in said(result)


def test_a_spec_dataset_that_is_not_data_is_not_echoed(spec_folder):
    secret = spec_folder.parent / f"{spec_folder.name}-secret.txt"
    secret.write_text("TOKEN-abc123-do-not-print\n")
    path = spec_folder / "spec.toml"
    path.write_text(SPEC.format(run="", model="multiphasic", models="").replace("data.csv", f"../{secret.name}"))
    result = invoke("compare", path)
    assert result.exit_code == 2 and "data error" in said(result)
    assert "TOKEN" not in said(result)


def test_spec_model_files_resolve_against_the_spec_folder_and_are_recorded(spec_folder, tmp_path_factory, monkeypatch):
    from pkpd.compare import load_spec

    (spec_folder / "models").mkdir()
    (spec_folder / "models" / "mine.py").write_text((ROOT / "models" / "multiphasic.py").read_text()
                                                     if (ROOT / "models" / "multiphasic.py").exists() else "")
    path = spec_folder / "spec.toml"
    path.write_text(SPEC.format(run="", model="models/mine.py:multiphasic", models=""))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # not the spec's folder
    spec = load_spec(path)
    fit, = spec.fits
    assert fit.model == f"{(spec_folder / 'models' / 'mine.py').resolve()}:multiphasic"
    assert fit.label == "multiphasic"
    assert len(fit.model_sha256) == 64 and len(fit.digest) == 64
    (spec_folder / "models" / "mine.py").write_text((spec_folder / "models" / "mine.py").read_text() + "\n# edited\n")
    assert load_spec(path).fits[0].digest != fit.digest  # an edited model file is a changed fit


def test_a_model_without_observations_and_a_nan_right_hand_side_get_messages(tmp_path):
    empty = tmp_path / "noobs.py"
    empty.write_text(
        "from pkpd.models import Dosing, LogNormal, Module, Parameter\n"
        "noobs = Module(name='noobs', description='x', parameters=(Parameter('k', 0.1, '1/h', 'k', "
        "prior=LogNormal(0.1, 1.0)),), initial=lambda p, c, m: {'a': 0}, rhs=lambda t, s, p, c, x, m: "
        "{'a': -p.k * s.a}, time_unit='h', dose_unit='mg', dosing=(Dosing('a'),), observations=())\n")
    result = invoke("simulate", empty, "-o", tmp_path / "s.csv", "--dose", "100 mg")
    assert result.exit_code == 2 and "has no observations" in said(result) and not (tmp_path / "s.csv").exists()
    nan = tmp_path / "nanrhs.py"
    nan.write_text(
        "from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter\n"
        "nanrhs = Module(name='nanrhs', description='x', parameters=(Parameter('k', 0.1, '1/h', 'k', "
        "prior=LogNormal(0.1, 1.0)),), initial=lambda p, c, m: {'a': 0}, rhs=lambda t, s, p, c, x, m: "
        "{'a': -p.k * s.a * (s.a - s.a) / (s.a - s.a)}, time_unit='h', dose_unit='mg', dosing=(Dosing('a'),), "
        "observations=(Observation('conc', lambda t, s, p, c, x, m: s.a, 'mg/L', error='proportional', sigma=0.1),))\n")
    result = invoke("simulate", nan, "-o", tmp_path / "n.csv", "--dose", "100 mg")
    assert result.exit_code == 2 and "right-hand side (derivatives) gives NaN or infinity" in said(result)
    assert "Integration successful" not in said(result) and not (tmp_path / "n.csv").exists()


def test_the_compiled_code_cache_never_imports_a_planted_file(tmp_path, monkeypatch):
    from pkpd.models import compiled, load

    monkeypatch.setenv("PKPD_CACHE", str(tmp_path))
    model = load("multiphasic")
    source = compiled._source(model)
    import hashlib

    path = tmp_path / "compiled" / f"pkpd_{hashlib.sha256(source.encode()).hexdigest()[:16]}.py"
    path.parent.mkdir(parents=True)
    path.write_text("raise RuntimeError('planted code ran')\n")
    compiled.compiled_functions.cache_clear()
    import sys
    for name in [n for n in sys.modules if n.startswith("pkpd_compiled_")]:
        monkeypatch.delitem(sys.modules, name)
    module = compiled.compiled_functions(model)
    assert path.read_text() == source and hasattr(module, "__file__")
    compiled.compiled_functions.cache_clear()


def test_the_compiled_code_index_skips_generation_and_is_verified_before_import(tmp_path, monkeypatch):
    """A model generated before is found by its expressions without generating the source again;
    an index naming an edited module, or a damaged index, makes it generate afresh."""
    import sys
    from pathlib import Path

    from pkpd.models import compiled, load

    monkeypatch.setenv("PKPD_CACHE", str(tmp_path))
    model = load("multiphasic")
    generate = compiled._source

    def fresh():
        compiled.compiled_functions.cache_clear()
        for name in [n for n in sys.modules if n.startswith("pkpd_compiled_")]:
            monkeypatch.delitem(sys.modules, name)
        return compiled.compiled_functions(model)

    source = compiled._source(model)
    module = fresh()
    index = tmp_path / "compiled" / f"key_{compiled.expressions_key(model)}.txt"
    generated = Path(module.__file__)
    assert generated.read_text() == source and index.read_text() in generated.name

    def no_generation(model):
        raise AssertionError("the source was generated again")

    monkeypatch.setattr(compiled, "_source", no_generation)
    assert hasattr(fresh(), "predict_all_cashkarp")  # found through the index
    generated.write_text(source + "\nraise RuntimeError('edited code ran')\n")
    with pytest.raises(AssertionError, match="generated again"):
        fresh()  # the edited module is not imported: its text no longer matches the digest
    monkeypatch.setattr(compiled, "_source", generate)
    for damage in ("", "../../../etc/passwd", "\xff\xfe"):
        index.write_bytes(damage.encode("latin-1"))
        assert hasattr(fresh(), "predict_all_cashkarp") and generated.read_text() == source
    compiled.compiled_functions.cache_clear()


def test_unexpected_errors_print_one_line_and_debug_shows_the_traceback(tmp_path):
    import subprocess
    import sys

    code = ("import sys; import pkpd.cli as c\n"
            "def boom(): raise RuntimeError('kaboom')\n"
            "c.app.command('boom')(boom)\nsys.argv = ['pkpd'] + sys.argv[1:]\nc.main()\n")
    plain = subprocess.run([sys.executable, "-c", code, "boom"], capture_output=True, text=True)
    assert plain.returncode == 3 and "internal error" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-c", code, "--debug", "boom"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "kaboom" in debug.stderr


# --- random corruption: never a traceback, never a silent change elsewhere ---------------------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from pkpd.resources import example_data  # noqa: E402


def _sample_bytes() -> bytes:
    """VALID_NONMEM and the first subjects of the example ADaM file: both formats, small."""
    adam = example_data("adam").read_text(encoding="utf-8").splitlines()
    return VALID_NONMEM.encode(), ("\n".join(adam[:400]) + "\n").encode()


SAMPLES = _sample_bytes()
_edits = st.lists(st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.floats(0, 1),
                            st.binary(min_size=1, max_size=3)), min_size=1, max_size=6)


def _corrupt(data: bytes, edits, lo: int = 0, hi: int | None = None) -> bytes:
    out = bytearray(data)
    for kind, where, new in edits:
        end = len(out) if hi is None else min(hi, len(out))
        if end <= lo:
            break
        i = lo + int(where * (end - lo - 1))
        if kind == "replace":
            out[i:i + len(new)] = new
        elif kind == "insert":
            out[i:i] = new
        else:
            del out[i:i + len(new)]
        if hi is not None:
            hi += len(out) - len(data) if kind != "replace" else 0
    return bytes(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(range(len(SAMPLES))), edits=_edits)
def test_random_byte_corruption_never_raises(tmp_path, which, edits):
    path = tmp_path / "corrupt.csv"
    path.write_bytes(_corrupt(SAMPLES[which], edits))
    result = check_file(path)  # never raises, whatever the bytes
    assert (result.cohort is None) == (not result.report.ok)


def _records(cohort):
    obs = cohort.observations.assign(_line=cohort.lines["observations"].to_numpy())
    doses = cohort.doses.assign(_line=cohort.lines["doses"].to_numpy())
    return {int(r["_line"]): tuple(r.drop("_line").astype(str)) for frame in (obs, doses)
            for _, r in frame.iterrows()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(2, 9), edits=st.lists(st.tuples(
    st.sampled_from(["replace", "insert", "delete"]), st.floats(0, 1),
    st.binary(min_size=1, max_size=2).filter(lambda b: not set(b) & set(b'\r\n"'))), min_size=1, max_size=4))
def test_corrupting_one_line_never_changes_another_record_silently(tmp_path, line, edits):
    original = VALID_NONMEM.encode()
    lines = original.split(b"\n")
    start = sum(len(x) + 1 for x in lines[:line - 1])
    corrupted = _corrupt(original, edits, start, start + len(lines[line - 1]))
    path = tmp_path / "corrupt.csv"
    path.write_bytes(corrupted)
    result = check_file(path)
    if result.cohort is None:
        assert result.report.errors  # refused, with its reasons
        return
    before, after = _records(read_cohort_text(tmp_path)), _records(result.cohort)
    for number, record in before.items():
        if number != line:  # every other record is read exactly as before
            assert after.get(number) == record, (number, result.report.format())
    assert set(after) <= set(before) | {line}


def read_cohort_text(tmp_path):
    path = tmp_path / "original.csv"
    path.write_text(VALID_NONMEM)
    return read_cohort(path)


@pytest.mark.parametrize("cell, hint", [
    ('"5,5"', "a decimal comma? write 5.5"),
    ('"5,000"', "thousands separators? write 5000"),
    ("2024-01-03", "a date?"),
    ("\u22125000", "a Unicode minus sign; write -5000"),
    ("5\u00a0000", "spaces between digit groups? write 5000"),
    ("5x10^3", "write powers of ten as 5e3"),
])
def test_numbers_written_the_european_or_spreadsheet_way_get_a_hint(write, cell, hint):
    error, = findings(write(replace_line(VALID_NONMEM, 4, "5000", cell)), "non-numeric")
    assert error.line == 4 and error.column == "DV" and hint in error.message


MODEL_FILE = '''from pkpd.models import Dosing, LogNormal, Module, Observation, Parameter
m = Module(name="m", description="x", parameters=(Parameter("k", TYPICAL, UNIT, "k", prior=LogNormal(0.1, 1.0)),),
    initial=lambda p, c, m: {"a": 0}, rhs=lambda t, s, p, c, x, m: {"a": RHS}, time_unit="h", dose_unit="mg",
    dosing=(Dosing("a"),), observations=(Observation("conc", lambda t, s, p, c, x, m: s.a, "mg/L",
                                                     error="proportional", sigma=0.1),))
'''


@pytest.mark.parametrize("typical, unit, rhs, wording", [
    ("float('nan')", '"1/h"', "-p.k * s.a", "typical value must be positive and finite"),
    ("0.1", '"1/h*2**99"', "-p.k * s.a", "is not a unit pint reads"),
    ("0.1", '"1/d"', "-p.k * s.a", "uses day but model m works in h"),
    ("0.1", '"1/h"', "-p.k * s.a if s.a > 1 else 0", "m.where(CONDITION, VALUE_IF_TRUE, VALUE_IF_FALSE)"),
    ("0.1", '"1/h"', "__import__('numpy').exp(-p.k) * s.a", "m.exp, m.log"),
    ("0.1", '"1/h"', "-p.nosuch * s.a", "uses parameter 'nosuch', which is not defined; available: k"),
])
def test_model_file_mistakes_name_the_parameter_or_function_and_the_fix(tmp_path, typical, unit, rhs, wording):
    path = tmp_path / "m.py"
    path.write_text(MODEL_FILE.replace("TYPICAL", typical).replace("UNIT", unit).replace("RHS", rhs))
    result = invoke("simulate", path, "-o", tmp_path / "s.csv", "--dose", "100 mg")
    assert result.exit_code == 2 and wording in said(result) and not (tmp_path / "s.csv").exists()


def test_column_names_that_differ_only_in_case_and_nul_bytes_are_located(write):
    error, = findings(write(VALID_NONMEM.replace("PRODUCT,LD", "PRODUCT,dv", 1)), "header")
    assert error.line == 1 and "DV and dv" in error.message
    error, = findings(write(replace_line(VALID_NONMEM, 4, "5000", "50\x0000").encode(), "nul.csv"), "encoding")
    assert error.line == 4 and "NUL byte on line 4" in error.message


@pytest.mark.parametrize("prior, wording", [
    ("cmax=LogNormal(1e999,1)", "needs a finite median > 0"),
    ("cmax=LogNormal(__import__('os'),1)", "is not LogNormal(MEDIAN, SD) or HalfNormal(SCALE)"),
    ("omega_nosuch=HalfNormal(1)", "has no parameter 'omega_nosuch'"),
    ("sigma_transgene=HalfNormal(1)", "a residual SD takes a LogNormal prior"),
])
def test_prior_options_are_checked_before_any_work(spec_folder, prior, wording):
    result = invoke("fit", "multiphasic", spec_folder / "data.csv", "-o", spec_folder / "run", "--prior", prior)
    assert result.exit_code == 2 and wording in said(result) and not (spec_folder / "run").exists()
