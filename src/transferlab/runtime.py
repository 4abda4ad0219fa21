"""`setup()`: the process-wide settings every entry point makes once, before it runs.

Kept out of import time, so that importing any transferlab module changes nothing about
the process (a notebook, a test, another tool importing us keeps its own settings).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings


@functools.cache
def setup() -> None:
    """Quiet, registered, ready: called by transferlab-train, -rerun, -export, -report."""
    from hydra_plugins.transferlab_optuna import register_optuna_sweeper
    from transferlab.studies import register_studies

    register_studies()  # `-cn <study>` finds experiments/
    register_optuna_sweeper()  # `hydra/sweeper=optuna`
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Lightning's INFO lines (accelerator banners, tips, checkpoint restores) drown the results.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    _ignore_warnings_nobody_can_act_on()


def _ignore_warnings_nobody_can_act_on() -> None:
    # Lightning 2.6 on torch 2.14 warns about its own use of a torch API.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Frozen BatchNorm layers are put in eval mode on purpose (see TransferModule.train).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")
    # Lightning 2.6's all_gather (DDP test predictions) uses a torch API that torch deprecates.
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather")
    # Under DDP, TransferModule reduces its epoch sums over the processes before logging them.
    sync_dist = r"It is recommended to use `self.log\(.*sync_dist=True"
    warnings.filterwarnings("ignore", message=sync_dist)
