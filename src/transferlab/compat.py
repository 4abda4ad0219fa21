"""Every use of Lightning's and Hydra's internals, in one place: what is not their
documented API and may change in any release. Checked against hydra-core 1.3.8 and
pytorch-lightning 2.6.6 (lightning-fabric of the same release); after an upgrade, the
tests of checkpointing, resume, the data module's position and the Optuna sweeper read
through here.

Documented API is used where it is needed (HydraConfig, hydra.utils.instantiate, Callback,
SearchPathPlugin, Lightning's Trainer, callbacks, loggers and plugins). Hydra is imported
at the top (Hydra's entry points load it anyway); Lightning only inside each function, as
this module serves light ones too (the sweeper's process, the first pass of validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    ElementType,
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.plugin import Plugin
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = [  # Hydra's own types, used as they are by the Optuna sweeper
    "ChoiceSweep",
    "IntervalSweep",
    "JobReturn",
    "JobStatus",
    "Override",
    "OverridesParser",
    "Quote",
    "QuotedString",
    "Transformer",
]

# --- Hydra ------------------------------------------------------------------------------


def register_plugin(plugin: type[Plugin]) -> None:
    """Hydra only instantiates registered plugins, and its scan of the hydra_plugins
    namespace misses editable installs."""
    Plugins.instance().register(plugin)


def instantiate_launcher(
    hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
) -> Launcher:
    """The launcher `hydra/launcher` selects, as Hydra's own sweepers get theirs."""
    return Plugins.instance().instantiate_launcher(
        hydra_context=hydra_context, task_function=task_function, config=config
    )


def runs_in_this_process(launcher: Launcher) -> bool:
    """Whether the launcher runs jobs in the sweeper's process (Hydra's basic one)."""
    return isinstance(launcher, BasicLauncher)


def overrides_parser(config_loader: Any = None) -> OverridesParser:
    """Hydra's parser of the override grammar (`interval(...)`, `choice(...)`, `a,b`)."""
    return OverridesParser.create(config_loader=config_loader)


def parse_override(text: str) -> Override | None:
    """One command-line override as Hydra reads it; None for what is not one (`-m`)."""
    try:
        return overrides_parser().parse_override(text)
    except HydraException:
        return None


def override_value_text(value: ElementType) -> str:
    """A value in the override grammar (`{token:x,n:[1,2]}`), as Hydra writes a sweep job's
    overrides: escaped where needed, no spaces after separators."""
    return Override._get_value_element_as_str(value)


def job_error(job: JobReturn) -> BaseException:
    """The exception a failed job raised: `return_value` would raise it again (and print
    a line), Hydra keeps it in `_return_value`."""
    return job._return_value


# --- Lightning --------------------------------------------------------------------------


def is_local_path(path: str | Path) -> bool:
    """Whether Lightning writes `path` to the local file system (not to a remote store)."""
    from fsspec.implementations.local import LocalFileSystem
    from lightning_fabric.utilities.cloud_io import get_filesystem

    return isinstance(get_filesystem(path), LocalFileSystem)


def accelerator_names() -> list[str]:
    """What `Trainer(accelerator=...)` accepts by name."""
    from pytorch_lightning.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def strategy_names() -> list[str]:
    """What `Trainer(strategy=...)` accepts by name."""
    from pytorch_lightning.strategies import StrategyRegistry

    return ["auto", *sorted(StrategyRegistry.available_strategies())]


def training_position(trainer: pl.Trainer) -> tuple[int, int, bool]:
    """(epoch, batches of it trained, whether its end-of-epoch hooks have run), from the
    fit loop's progress counters."""
    loop = trainer.fit_loop
    epoch_ended = loop.epoch_progress.current.processed > trainer.current_epoch
    return trainer.current_epoch, loop.epoch_loop.batch_progress.current.processed, epoch_ended


def uncount_last_step(checkpoint: dict[str, Any]) -> None:
    """For a checkpoint taken before a step rather than at the end of the previous one:
    Lightning expects the latter, before it counts the step for its loggers, and adds one
    on restoring."""
    checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
