"""Model recovery: does the comparison rank the true model first when it is among the candidates?

    python analyses/model_recovery.py -o recovery-run                  # 3 models x 10 seeds
    python analyses/model_recovery.py -o recovery-run --models multiphasic,multiphasic_lag --seeds 5

For each true model and seed, a cohort is simulated on the trials' design (3.0e8, 4.5e8 and
6.0e8 cells after lymphodepletion, `--subjects` per dose level; transgene sampled every 3 days
in month 1 and monthly to month 12, with inter-individual variability, residual error and
censoring below the LLOQ). One comparison spec then fits every candidate model to every cohort
(one dataset per cohort), on dask like any comparison, resumable: re-running the command
continues a killed run. The model ranked first by the subject-level ELPD (integrated LOO) of
each cohort is tallied against the true model in a confusion matrix, printed and written to
OUT/confusion.csv; the share of cohorts whose true model came first is the recovery rate.

Each candidate is fitted with its model's default variability except multiphasic_lag, whose lag
is a population value (as in analyses/compare_ck_models.toml: individual lags are not
identifiable from samples 3 days apart).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pkpd.compare import compare, load_spec
from pkpd.data import write_nonmem
from pkpd.models import load
from pkpd.simulate import simulate

MODELS = ("multiphasic", "multiphasic_lag", "antigen_driven")
DOSES = ("3e8", "4.5e8", "6e8")
SETTINGS = {  # per candidate: extra keys of its [[models]] entry
    "multiphasic_lag": 'iiv = ["cmax", "tmax", "foldx", "alpha", "fb", "beta"]\nfixed_effects = ["lag"]\n',
    "antigen_driven": 'iiv = ["rho", "alpha", "fblood"]\n',
}


def simulate_cohorts(out: Path, models, seeds: int, subjects: int) -> list[tuple[str, str, Path]]:
    """(dataset name, true model, file) for every model and seed; files already written are kept."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    written = []
    for m, name in enumerate(models):
        model = load(name)
        for seed in range(seeds):
            path = data / f"{name}-{seed}.csv"
            if not path.exists():
                cohort = simulate(model, list(DOSES), n=subjects, seed=1000 * (m + 1) + seed, analytes=["transgene"])
                write_nonmem(cohort, path)
            written.append((f"{name}-{seed}", name, path))
    return written


def write_spec(out: Path, cohorts, models, chains: int, draws: int) -> Path:
    lines = ["[run]", 'name = "model-recovery"', "seed = 20261129", f"chains = {chains}", f"draws = {draws}",
             f"tune = {draws}", "max_divergences = 1000", "max_refits = 0", "loo_samples = 200", ""]
    for dataset, _, path in cohorts:
        lines += ["[[datasets]]", f'name = "{dataset}"', f'path = "{path.relative_to(out).as_posix()}"',
                  'analytes = ["transgene"]', ""]
    for name in models:
        lines += ["[[models]]", f'model = "{name}"', SETTINGS.get(name, ""), ""]
    spec = out / "recovery.toml"
    spec.write_text("\n".join(lines), encoding="utf-8")
    return spec


def confusion(leaderboard: pd.DataFrame, cohorts) -> pd.DataFrame:
    """Rows: true model; columns: the model ranked first; cells: cohorts."""
    truth = {dataset: model for dataset, model, _ in cohorts}
    first = leaderboard[leaderboard["rank"] == 0].set_index("dataset")["model"]
    pairs = pd.DataFrame({"true": [truth[d] for d in first.index], "ranked_first": first.to_numpy()})
    order = list(dict.fromkeys(m for _, m, _ in cohorts))
    return pd.crosstab(pairs["true"], pairs["ranked_first"]).reindex(index=order, columns=order, fill_value=0)


def recover(out: Path, models=MODELS, seeds: int = 10, subjects: int = 8, chains: int = 2, draws: int = 500,
            workers: int | None = None) -> tuple[pd.DataFrame, float]:
    """Simulate, compare, and return the confusion matrix and the recovery rate."""
    out.mkdir(parents=True, exist_ok=True)
    cohorts = simulate_cohorts(out, models, seeds, subjects)
    result = compare(load_spec(write_spec(out, cohorts, models, chains, draws)), out / "run", workers=workers)
    matrix = confusion(result.leaderboard, cohorts)
    matrix.to_csv(out / "confusion.csv")
    total = int(matrix.to_numpy().sum())
    rate = float(sum(matrix.loc[m, m] for m in matrix.index)) / total if total else 0.0
    return matrix, rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the cohorts, the run and confusion.csv")
    parser.add_argument("--models", default=",".join(MODELS), help="candidate (and true) models, comma-separated")
    parser.add_argument("--seeds", type=int, default=10, help="cohorts simulated per true model")
    parser.add_argument("--subjects", type=int, default=8, help="subjects per dose level (3 levels)")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=500, help="draws (and tuning steps) per chain")
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    matrix, rate = recover(args.out, models, args.seeds, args.subjects, args.chains, args.draws, args.workers)
    print("true model (rows) against the model ranked first (columns), cohorts:")
    print(matrix.to_string())
    print(f"recovery rate: {rate:.0%} of {int(matrix.to_numpy().sum())} cohorts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
