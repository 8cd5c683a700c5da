"""The command line: exit codes, located messages, no tracebacks, files written."""

import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from pkpd.cli import app
from pkpd.data import read_cohort

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_the_command_line_starts_without_the_libraries_few_commands_need():
    """scipy's integrate, stats, special and sparse and matplotlib cost over a second of every
    command's start: they load when a command first needs them (pymc and dask as well)."""
    heavy = ("matplotlib", "scipy.integrate", "scipy.stats", "scipy.special", "scipy.sparse", "pymc", "pytensor",
             "dask.distributed")
    code = f"import sys, pkpd.cli; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []

@pytest.mark.parametrize("command", [[], ["data"], ["data", "check"], ["data", "convert"], ["nca"], ["demo"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_check_valid_file_exits_0(example_adam):
    result = run("data", "check", example_adam)
    assert result.exit_code == 0
    assert "0 error(s)" in result.output and "41 subjects" in result.output


def malformed_copy(example_nonmem, tmp_path):
    """The example file with four errors injected at known lines; returns (path, expected)."""
    lines = example_nonmem.read_text().splitlines()
    header = lines[0].split(",")
    col = {name: i for i, name in enumerate(header)}
    expected = []

    def corrupt(line_no, column, value):
        cells = lines[line_no - 1].split(",")
        cells[col[column]] = value
        lines[line_no - 1] = ",".join(cells)
        expected.append((line_no, column))

    dose_line = next(i + 1 for i, ln in enumerate(lines) if ",1,1,." in ln and i > 0)
    corrupt(5, "DV", "12,5".replace(",", ";"))  # non-numeric
    corrupt(9, "EVID", "9")  # unknown EVID
    corrupt(dose_line, "AMT", "0")  # non-positive dose
    corrupt(40, "UNIT", "wombats")  # unknown unit
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, expected


def test_check_malformed_example_names_line_and_column(example_nonmem, tmp_path):
    path, expected = malformed_copy(example_nonmem, tmp_path)
    result = run("data", "check", path)
    assert result.exit_code == 1
    for line, column in expected:
        assert f"bad.csv:{line}, column {column}" in result.output, (line, column, result.output)
    assert "FAILED" in result.output and "4 error(s)" in result.output


def test_convert_round_trip_and_no_output_on_error(example_nonmem, tmp_path):
    out = tmp_path / "adam.csv"
    result = run("data", "convert", example_nonmem, "--to", "adam", "-o", out)
    assert result.exit_code == 0 and out.exists()
    assert read_cohort(out).equals(read_cohort(example_nonmem))
    bad, _ = malformed_copy(example_nonmem, tmp_path)
    target = tmp_path / "never.csv"
    result = run("data", "convert", bad, "--to", "nonmem", "-o", target)
    assert result.exit_code == 1 and not target.exists()
    assert run("data", "convert", example_nonmem, "--to", "sas", "-o", target).exit_code == 2


def test_bad_option_values_are_clean_errors(example_nonmem):
    result = run("data", "check", example_nonmem, "--map", "subject")
    assert result.exit_code == 2 and "ROLE=COLUMN" in result.output


def test_nca_writes_tables_and_prints_summary(example_nonmem, tmp_path):
    out = tmp_path / "nca.csv"
    result = run("nca", example_nonmem, "-o", out)
    assert result.exit_code == 0
    assert "NCA summary by dose group" in result.output and "CD19/BCMA" in result.output
    table = pd.read_csv(out)
    assert {"cmax", "tmax", "auc_0_28d", "auc_0_90d", "auc_last", "half_life", "aplasia_duration",
            "nadir_fold_change"} <= set(table.columns)
    summary = pd.read_csv(tmp_path / "nca_summary.csv")
    assert {"n", "geo_mean", "geo_cv_percent", "median", "min", "max"} <= set(summary.columns)


def test_demo_writes_check_and_exposure_tables(tmp_path):
    result = run("demo", "-o", tmp_path / "demo", "--skip-compare", "--skip-fit")
    assert result.exit_code == 0, result.output
    for name in ("check_report.txt", "nca.csv", "nca_summary.csv"):
        assert (tmp_path / "demo" / name).stat().st_size > 0


def test_installed_entry_point_runs(example_adam):
    result = subprocess.run([sys.executable, "-m", "pkpd", "data", "check", str(example_adam)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_public_api_calls():
    import pkpd
    from pkpd.fit import fit_individual  # subpackage imports still work beside the functions

    assert callable(pkpd.fit) and callable(pkpd.compare) and callable(fit_individual)
    assert pkpd.fit.__module__ == "pkpd.fit.engine" and pkpd.compare.__module__ == "pkpd.compare"
