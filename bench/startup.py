"""Start-up: what a user waits for before anything useful happens, each as a new process,
next to `python -c "import torch"` measured in the same run (the floor of any torch tool).

    python bench/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

APP = [sys.executable, "-m", "transferlab.train"]
CASES = {
    "--help": [*APP, "--help"],
    "--cfg job": [*APP, "--cfg", "job"],
    "a bad config (exits 1)": [*APP, "optimizer.lr=-1"],
    "1-epoch digits run, end to end": [
        *APP,
        "trainer.max_epochs=1",
        "~callbacks.progress_bar",
        "experiment_name=bench_startup",
    ],
}
IMPORT_TORCH = [sys.executable, "-c", "import torch"]


def seconds(command: list[str], cwd: str, repeats: int) -> float:
    """Median wall time of `repeats` runs of `command`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True, timeout=600)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def records(repeats: int = 3) -> list[dict]:
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(CASES["1-epoch digits run, end to end"], cwd=cwd, capture_output=True)
        torch_import = seconds(IMPORT_TORCH, cwd, repeats)  # the store exists from here on
        return [
            {
                "case": f"start-up: {case}",
                "metric": "wall seconds vs `python -c 'import torch'` (lower is better)",
                "transferlab": round(value, 2),
                "baseline": round(torch_import, 2),
                "ratio": round(value / torch_import, 2),
            }
            for case, command in CASES.items()
            for value in [seconds(command, cwd, repeats)]
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    for record in records(parser.parse_args().repeats):
        print(record)


if __name__ == "__main__":
    main()
