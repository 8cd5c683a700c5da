"""Cost of validation: pkpd.check_file against a bare pandas.read_csv of the same file.

    python benchmarks/read_speed.py [FILE]

Prints the median time of each over several runs and the ratio (ours / pandas). Both run
side by side in this process, so the ratio is comparable across machines; absolute seconds
are not. The last line is machine-readable: `read_speed: ratio=R rows=N`.
"""

from __future__ import annotations

import statistics
import sys
import time

import pandas as pd

from pkpd.data import check_file
from pkpd.resources import example_data


def best_of(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else example_data("nonmem")
    rows = len(pd.read_csv(path))
    ours = best_of(lambda: check_file(path))
    peer = best_of(lambda: pd.read_csv(path))
    print(f"file: {path} ({rows} rows)")
    print(f"pkpd.check_file (read + validate + units + cohort): {ours * 1e3:8.1f} ms")
    print(f"pandas.read_csv (parse only):                      {peer * 1e3:8.1f} ms")
    print(f"read_speed: ratio={ours / peer:.2f} rows={rows}")


if __name__ == "__main__":
    main()
