"""`python -m transferlab.rerun RUN_ID` (console script `transferlab-rerun`): runs a
finished run again from what MLflow recorded, and says whether its final metrics match.

The run's `experiment.yaml` is the resolved config of the whole invocation (source stage,
baseline and all) and its params hold the group choices, so nothing depends on the config
files as they are today. The new run is tagged `transferlab.rerun_of`. On the CPU, with
deterministic algorithms, the metrics must match exactly. The recorded config is data from
a store others may write to: it is checked first (transferlab.trusted_configs: only
components that a config group defines, no resolver but a secret's `${oc.env:VAR}`, which is
read again here); a run given a literal secret, which is never recorded, is not rerun.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from transferlab.errors import UserError, exits_on_user_error
from transferlab.objective import GROUPS, changes_result
from transferlab.runtime import setup
from transferlab.tracking.recorded import EXPERIMENT_CONFIG, recorded_run
from transferlab.trusted_configs import SEARCHPATH_HELP, searching, trusted_config

COMPARED = ("test/acc", "test/loss", "val/acc_best")


def rerun(
    run_id: str,
    tracking_uri: str | None = None,
    output_dir: str | None = None,
    searchpath: tuple[str, ...] = (),
) -> bool:
    """Reruns `run_id`; True when every compared final metric is identical. `searchpath`:
    the user's own config folders (Hydra search path entries), whose components it may use."""
    with searching(searchpath):
        return _rerun(run_id, tracking_uri, output_dir)


def _rerun(run_id: str, tracking_uri: str | None, output_dir: str | None) -> bool:
    from mlflow.tracking import MlflowClient

    from transferlab.pipeline import run_stages
    from transferlab.tracking.store import RetryingClient
    from transferlab.tracking.store import tracking_uri as default_uri

    uri = default_uri(tracking_uri)
    client = RetryingClient(MlflowClient(uri))
    original = recorded_run(client, run_id, f"cannot rerun {run_id}")
    if original.info.status != "FINISHED":
        raise UserError(f"run {run_id} is {original.info.status}; only finished runs are rerun")
    missing = "not a transferlab training run (a sweep's parent? rerun one of its runs)"
    cfg = trusted_config(client, original, EXPERIMENT_CONFIG, missing, f"rerun {run_id}")
    _warn_if_code_changed(original.data.tags.get("mlflow.source.git.commit"))
    cfg.tracking.uri = uri
    cfg.output_dir = output_dir or str(
        Path("outputs") / f"rerun-{run_id[:8]}-{time.strftime('%H%M%S')}"
    )
    choices = {g: v for g, v in original.data.params.items() if g in GROUPS}
    new = run_stages(cfg, choices, {"transferlab.rerun_of": run_id})
    changed = changed_params(original.data.params, client.get_run(new.run_id).data.params)
    return _report(original.data.metrics, new.metrics, new.run_id) and not changed


def _warn_if_code_changed(recorded: str | None) -> None:
    try:
        current = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        current = None
    if recorded and current and recorded != current:
        print(
            f"warning: the run was made at commit {recorded[:12]}, the code here is at "
            f"{current[:12]}: results may differ",
            file=sys.stderr,
        )


def changed_params(original: dict[str, str], new: dict[str, str]) -> list[str]:
    """The params that can change a result (objective.changes_result) and differ between
    the run and its rerun, each printed: the rerun did not run the recorded config."""
    keys = sorted(k for k in original.keys() | new.keys() if changes_result(k))
    changed = [k for k in keys if original.get(k) != new.get(k)]
    for key in changed:
        print(f"  config {key}: {original.get(key)} -> {new.get(key)}  DIFFERS")
    return changed


def _report(original: dict[str, float], new: dict[str, float], new_run_id: str) -> bool:
    same = True
    print(f"rerun: {new_run_id}")
    for key in COMPARED:
        if key in original:
            before, after = original[key], new.get(key)
            match = before == after
            same &= match
            print(f"  {key:14} {before:.6f} -> {after:.6f}  {'match' if match else 'DIFFERS'}")
    print("final metrics match exactly" if same else "final metrics differ")
    return same


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_id", help="the MLflow run to rerun (a finished run)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI "
                        "or sqlite:///mlflow.db)")  # fmt: skip
    parser.add_argument("--output-dir", help="where checkpoints and plots go")
    parser.add_argument("--searchpath", action="append", default=[], help=SEARCHPATH_HELP)
    args = parser.parse_args(argv)
    setup()
    with exits_on_user_error():
        same = rerun(args.run_id, args.tracking_uri, args.output_dir, tuple(args.searchpath))
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
