"""The `pkpd` command line: a thin mirror of the library (typer + rich), one module per group.

    data.py        pkpd data check|convert, pkpd nca
    models.py      pkpd models list|show, pkpd simulate
    fitting.py     pkpd fit-individual, pkpd fit, pkpd sbc
    after_fit.py   pkpd ppc, pkpd dose, pkpd report
    comparison.py  pkpd compare
    trial.py       pkpd trial design|oc|simulate
    demo.py        pkpd demo
"""

from __future__ import annotations

import gc
import sys
from typing import Annotated

import typer

from . import after_fit, comparison, data, demo, fitting, models, trial
from .common import console, err_console, fail

app = typer.Typer(help="cart-pkpd: CAR-T cell PK/PD modelling.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(trial.app, name="trial")
app.command("nca")(data.nca_command)
app.command("simulate")(models.simulate_command)
app.command("fit-individual")(fitting.fit_individual_command)
app.command("fit")(fitting.fit_command)
app.command("sbc")(fitting.sbc_command)
app.command("ppc")(after_fit.ppc_command)
app.command("dose")(after_fit.dose_command)
app.command("report")(after_fit.report_command)
app.command("compare")(comparison.compare_command)
app.command("demo")(demo.demo)


def _version(value: bool):
    if value:
        from .. import __version__

        console.print(f"cart-pkpd {__version__}")
        raise typer.Exit()


_DEBUG = {"on": False}


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")] = False) -> None:
    """cart-pkpd: CAR-T cell PK/PD modelling."""
    _DEBUG["on"] = debug


def main() -> None:
    """The `pkpd` entry point: user mistakes exit 2 (usage) or 1 (data) with their message (see
    common.fail and common.read); anything else is a bug, reported in one line without a
    traceback unless --debug is given."""
    try:
        app()
    except Exception as exc:
        if _DEBUG["on"] or "--debug" in sys.argv:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\nThis is a bug in "
                          "cart-pkpd, not a mistake in your input: please report it with the command you ran; "
                          "`pkpd --debug ...` shows the traceback.", highlight=False)
        sys.exit(3)
    finally:
        # The process ends here: the interpreter's last garbage collections over every object of
        # numba, sympy, pandas and matplotlib took a second of each command's exit, to free
        # memory nobody uses again (atexit handlers still run, files still close).
        gc.freeze()


__all__ = ["app", "fail", "main"]
