"""Memory over a long in-process sweep: resident memory (RSS) after each trial.

A real multirun of N small_cnn trials on digits (1 epoch each, MLflow to a sqlite store in a
temporary folder) runs in this process through the app's own entry point, as in
bench/per_trial.py. A Hydra callback reads this process's RSS at the end of every job. The
first trials pay for imports, caches and allocator pools; from trial 10 on, whatever a
trial leaves behind adds up: the growth between trial 10 and trial N is the figure (goal:
under 100 MB for 100 trials, so a 1,000-trial study fits in memory).

    python bench/memory.py [--trials 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from per_trial import multirun

FROM_TRIAL = 10  # growth is counted from the end of this trial (1-based)
MB = 1e6
_resident_mb: list[float] = []  # after each job of the running multirun, in order


def resident_mb() -> float:
    """This process's resident memory now (Linux: /proc/self/statm, in pages)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


class ResidentAfterEachJob(Callback):
    """Hydra calls it in the job's process at the end of every job (basic launcher)."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        _resident_mb.append(resident_mb())


def resident_per_trial(trials: int) -> list[float]:
    """RSS in MB after each of `trials` in-process trials of one multirun."""
    _resident_mb.clear()
    sampler = f"{ResidentAfterEachJob.__module__}.{ResidentAfterEachJob.__qualname__}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        multirun(
            [
                "trainer.max_epochs=1",
                "~callbacks.progress_bar",
                f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
                f"hydra.sweep.dir={work / 'sweeps'}",
                f"+hydra.callbacks.resident._target_={sampler}",
                "experiment_name=memory",
                "seed=" + ",".join(str(s) for s in range(trials)),
            ]
        )
    if len(_resident_mb) != trials:
        raise RuntimeError(f"expected {trials} trials, {len(_resident_mb)} ended")
    return list(_resident_mb)


def records(trials: int = 100) -> list[dict]:
    resident = resident_per_trial(trials)
    start, end = resident[FROM_TRIAL - 1], resident[-1]
    growth = end - start
    return [
        {
            "case": f"{trials}-trial in-process multirun, small_cnn digits, 1 epoch each",
            "metric": f"RSS growth trial {FROM_TRIAL} -> {trials}, MB (goal < 100 for 100)",
            "transferlab": round(growth, 1),
            "baseline": round(start, 1),
            "ratio": round(growth / (trials - FROM_TRIAL), 3),
            "baseline_is": f"RSS after trial {FROM_TRIAL}, MB",
            "ratio_is": "MB per trial",
            "resident_mb": [round(r, 1) for r in resident],
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    if args.trials <= FROM_TRIAL:
        parser.error(f"--trials={args.trials}: growth is counted from trial {FROM_TRIAL}")
    for record in records(args.trials):
        print({k: v for k, v in record.items() if k != "resident_mb"})
        every = record["resident_mb"][FROM_TRIAL - 1 :: 10]
        print(f"RSS every 10 trials from trial {FROM_TRIAL}, MB: {every}")


if __name__ == "__main__":
    main()
