"""Per-trial cost of a sweep: what each trial spends outside `trainer.fit`.

A real multirun of N short trials runs in this process, through the app's own entry point
(Hydra's basic launcher, the sweep's MLflow parent run, a child run per trial), after one
warm-up trial has paid for the imports and the store's creation, as in a long sweep. Each
run records its `time/fit_s`; the cost per trial is (sweep wall - sum of fit times) / N.
It holds the config composition, the MLflow runs, params and artifacts, data set-up, the
test pass, plots and the inference-cost measurement.

    python bench/per_trial.py [--trials 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from transferlab import train

EPOCHS = 2


def multirun(overrides: list[str]) -> float:
    """Wall seconds of `transferlab-train -m <overrides>`, in this process."""
    argv = sys.argv
    sys.argv = ["transferlab-train", "-m", *overrides]
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the per-trial tables
            train.main()
    finally:
        sys.argv = argv
    return time.perf_counter() - start


def records(trials: int = 10) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        common = [
            f"trainer.max_epochs={EPOCHS}",
            "~callbacks.progress_bar",
            f"tracking.uri={uri}",
            f"hydra.sweep.dir={work / 'sweeps'}",
        ]
        multirun([*common, "experiment_name=warmup", "optimizer.lr=1e-3"])
        seeds = ",".join(str(s) for s in range(trials))
        wall = multirun([*common, "experiment_name=per_trial", f"seed={seeds}"])
        fit_seconds = _fit_seconds(uri, "per_trial")
    if len(fit_seconds) != trials:
        raise RuntimeError(f"expected {trials} finished trials, found {len(fit_seconds)}")
    per_trial = (wall - sum(fit_seconds)) / trials
    return [
        {
            "case": f"{trials}-trial multirun, small_cnn digits, {EPOCHS} epochs each",
            "metric": "seconds per trial outside trainer.fit (lower is better; goal <= 1)",
            "transferlab": round(per_trial, 3),
            "baseline": round(sum(fit_seconds) / trials, 3),
            "ratio": round(per_trial / (sum(fit_seconds) / trials), 3),
            "baseline_is": "mean fit seconds per trial",
        }
    ]


def _fit_seconds(uri: str, experiment_name: str) -> list[float]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id],
        "attributes.status = 'FINISHED' and tags.`transferlab.role` = 'finetune'",
    )
    return [run.data.metrics["time/fit_s"] for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    for record in records(args.trials):
        print(record)


if __name__ == "__main__":
    main()
