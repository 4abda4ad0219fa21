"""`resume=<run id | checkpoint path>`: an interrupted run goes on as the same MLflow run
(no second run, no params logged twice, metric steps continuing) from its last checkpoint,
with the config it recorded. Overrides that would change its result are refused.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import RunStopped, UserError
from transferlab.objective import GROUPS, changes_result
from transferlab.stage_configs import stage_config
from transferlab.tracking.digests import LAST_CHECKPOINT, check_recorded_digest
from transferlab.tracking.recorded import CHECKPOINT_TAG, STAGE_CONFIG, recorded_run
from transferlab.trusted_configs import trusted_config

if TYPE_CHECKING:
    from mlflow.entities import Run

RESUME_STATE_KEY = "transferlab_resume"  # what ResumableTraining adds to every checkpoint
RUN_ID_KEY = "run_id"  # in that state: the run the checkpoint belongs to


class RunInterrupted(RunStopped):
    """SIGTERM or SIGINT during training: the run ends KILLED, resumable from `checkpoint`."""

    status = "KILLED"

    def __init__(self, signal_name: str, step: int, checkpoint: Path, run_id: str | None):
        super().__init__(
            f"{signal_name} at step {step}: checkpoint written to {checkpoint}; continue "
            f"with: transferlab-train resume={run_id or checkpoint}"
        )
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.tags = {"transferlab.interrupted_by": signal_name}

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + signal.Signals[self.signal_name].value


@dataclass(frozen=True)
class Resumption:
    run_id: str
    checkpoint: Path
    config: DictConfig  # the stage config the run recorded
    role: str
    choices: dict[str, str]


def refuse_changing_overrides(
    overrides: list[str], cfg: DictConfig, resumption: Resumption, target: str
) -> None:
    """The same command with `resume=` added is accepted: an override equal to what the run
    recorded changes nothing. One that differs, on a key that changes results (see
    objective.NOT_RESULT_KEYS), would make the resumed run differ from the one that
    started: refused, naming the key, the recorded value and the new one."""
    weights = resumption.config.backbone.get("weights_path")
    command = stage_config(cfg, resumption.role, weights)  # what this command would train
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if not changes_result(key):
            continue
        recorded = _value_at(resumption.config, key)
        new = _value_at(command, key)
        if new != recorded:
            raise UserError(
                f"resume={target}: {key}={_shown(new)} differs from the run's recorded "
                f"{key}={_shown(recorded)}; a resumed run keeps its recorded config (drop "
                f"the override, or start a new run without resume)"
            )


_ABSENT = object()


def _value_at(cfg: DictConfig, key: str):
    """The plain value (a dict or list for a node) at dotted `key`, or _ABSENT."""
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _shown(value) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def find_resumption(
    target: str, tracking_uri: str, command: DictConfig | None = None
) -> Resumption:
    """The run and checkpoint `target` names, checked before anything is built. `command`:
    the config of the command that resumes it, whose own components the run may use."""
    from mlflow.tracking import MlflowClient

    path = Path(target)
    is_file = path.suffix == ".ckpt" or path.exists()
    run_id = _run_of_checkpoint(path) if is_file else target
    client = MlflowClient(tracking_uri)
    refusal = f"resume={target} is neither a checkpoint file nor a run in this store"
    run = recorded_run(client, run_id, f"{refusal} ({tracking_uri})")
    if run.info.status == "FINISHED":
        raise UserError(
            f"resume={target}: run {run_id} has finished; nothing to resume "
            "(transferlab-rerun runs it again)"
        )
    missing = "it is not a transferlab training run"
    config = trusted_config(client, run, STAGE_CONFIG, missing, f"resume {run_id}", command)
    if config.get("cv", {}).get("folds"):
        raise UserError(f"resume={target}: runs of cross-validation folds cannot be resumed")
    checkpoint = path if is_file else _last_checkpoint(target, run)
    if not is_file and _run_of_checkpoint(checkpoint) != run_id:  # read whole, checked early
        raise UserError(
            f"resume={target}: {checkpoint} now holds another run's checkpoint; pass "
            "resume=<path to this run's last.ckpt>"
        )
    choices = {g: v for g, v in run.data.params.items() if g in GROUPS}
    return Resumption(run_id, checkpoint, config, run.data.tags["transferlab.role"], choices)


def _last_checkpoint(target: str, run: Run) -> Path:
    """The last.ckpt the run's tag names, if it is still the one the run wrote: the tag is
    the store's, and the store is shared. A path the user gives is the user's own."""
    recorded = run.data.tags.get(CHECKPOINT_TAG)
    if not recorded or not Path(recorded).exists():
        raise UserError(
            f"resume={target}: the run's last checkpoint ({recorded or 'none recorded'}) "
            "is not on this machine; pass resume=<path to last.ckpt>"
        )
    remedy = f"pass resume={recorded} if you trust that file"
    what = f"resume={target}"
    check_recorded_digest(run.info.run_id, run.data.tags, LAST_CHECKPOINT, recorded, what, remedy)
    return Path(recorded)


def _run_of_checkpoint(path: Path) -> str:
    """Read with weights_only=True, as every checkpoint is: a file that needs pickle to load
    is refused unread."""
    from transferlab.safe_load import load_tensors

    if not path.is_file():
        raise UserError(f"resume={path}: no such checkpoint file")
    checkpoint = load_tensors(path, f"resume={path}")
    state = checkpoint.get(RESUME_STATE_KEY) or {}
    if RUN_ID_KEY not in state:
        raise UserError(f"resume={path} is not a transferlab checkpoint (no run id in it)")
    return state[RUN_ID_KEY]
