"""Which keys a config may hold: those conf/train.yaml defines (a misspelt key is named,
with the close match), none missing, every `${...}` resolvable, and the keys that moved
refused with a line naming their new path. Light: nothing heavy imported.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from transferlab.errors import UserError, one_of

OVERLAYS = ("scratch",)  # keys merged onto a derived stage's config, checked there


ADDED_BY_SWEEPERS = ("optuna",)  # an Optuna trial's study and number


HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


@dataclass(frozen=True)
class Schema:
    top_level: tuple[str, ...]  # groups, sections and settings
    sections: dict[str, tuple[str, ...]]  # plain sections (no group, no `_target_`): their keys


@functools.cache
def schema(config: str = "train") -> Schema:
    """The keys a primary config (conf/train.yaml, conf/rank.yaml) defines: Hydra takes any
    `+key=value`, so a misspelt key would otherwise be ignored without a word. Read from
    the file, which stays the one place a key is added."""
    text = resources.files("transferlab.conf").joinpath(f"{config}.yaml").read_text()
    primary = OmegaConf.to_container(OmegaConf.create(text))  # unresolved: ${hydra:...}
    groups = [next(iter(entry)) for entry in primary["defaults"] if isinstance(entry, dict)]
    own = [key for key in primary if key not in ("defaults", "hydra")]
    plain = [key for key in own if isinstance(primary[key], dict) and key not in OVERLAYS]
    sections = {key: tuple(primary[key]) for key in plain}
    return Schema((*groups, *own), sections)


# Keys that moved to another path: the old path is refused with a line naming the new one,
# rather than as unknown (a config written before the move, a habit, a recorded run).
MOVED: dict[str, str] = {
    "head.name": "head=<option> or head._target_",
    "freeze.name": "freeze=<option> or freeze._target_",
    "regularizer.name": "regularizer=<option> or regularizer._target_",
    # transferlab's own keys, in their own nodes (taken off before the library is called)
    "optimizer.backbone_lr_mult": "optimizer.param_groups.backbone_lr_mult",
    "optimizer.layer_decay": "optimizer.param_groups.layer_decay",
    "optimizer.decay_bias_and_norm": "optimizer.param_groups.decay_bias_and_norm",
    "scheduler.monitor": "scheduler.lightning.monitor",
    "trainer.channels_last": "trainer.gpu.channels_last",
    "trainer.compile": "trainer.gpu.compile",
    **{
        f"dataset.{key}": f"dataset.task.{key}"
        for key in ("classes", "train_per_class", "val_fraction", "test_fraction", "split_seed")
    },
}


def _check_moved(cfg: DictConfig) -> None:
    for old, new in MOVED.items():
        if OmegaConf.select(cfg, old, default=_ABSENT) is not _ABSENT:
            raise UserError(f"{old} has moved: use {new}")


_ABSENT = object()


def refuse_moved_overrides(overrides: Iterable[str]) -> None:
    """A moved key set on the command line (`optimizer.backbone_lr_mult=0.1`): Hydra would
    refuse it as a key the config lacks and suggest `+`; named here with its new path, for
    the run's config and the stages' overlays alike. Called before Hydra composes."""
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        overlay, _, rest = key.partition(".")
        prefix, key = (f"{overlay}.", rest) if overlay in ("source", *OVERLAYS) else ("", key)
        for old, new in MOVED.items():
            if key == old or key.startswith(f"{old}."):
                raise UserError(f"{prefix}{old} has moved: use {prefix}{new}")


def check_keys(cfg: DictConfig, config: str = "train") -> None:
    """`config`: the primary config `cfg` was composed from (train, or rank for a ranking)."""
    _check_moved(cfg)
    known = schema(config)
    known_keys(cfg, "", known.top_level, "the config", known.top_level, ADDED_BY_SWEEPERS)
    for section, keys in known.sections.items():
        if not OmegaConf.is_dict(cfg[section]):
            raise UserError(f"{section}={cfg[section]!r} must hold keys: {one_of(keys)}")
        known_keys(cfg[section], f"{section}.", keys, section, required=keys)


def known_keys(
    node: DictConfig,
    prefix: str,
    accepted: Iterable[str],
    owner: str,
    required: Iterable[str] = (),
    implied: Iterable[str] = HYDRA_KEYS,
) -> None:
    """`implied` keys are taken but not worth listing (Hydra's own, a group's `name`)."""
    accepted = [*accepted]
    for key in node:
        if key not in accepted and key not in implied:
            raise _unknown(f"{prefix}{key}", accepted, owner)
    for key in required:
        if key not in node:
            raise UserError(f"{prefix}{key} is required: set it rather than delete it")


def _unknown(key: str, accepted: list[str], owner: str) -> UserError:
    """Names a close match first: most unknown keys are typos."""
    close = difflib.get_close_matches(key.rpartition(".")[2], accepted, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    takes = one_of(accepted) if accepted else "no options"
    return UserError(f"{key} is unknown{hint}; {owner} takes {takes}")


def no_missing_values(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = "/path/to/images" if missing[0].endswith("root") else "VALUE"
        raise UserError(f"{missing[0]} is required: pass {missing[0]}={example}")


def resolvable(cfg: DictConfig) -> None:
    """A `${...}` pointing nowhere would otherwise fail wherever it is first read."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        reason = str(err).partition("\n")[0]
        raise UserError(f"{err.full_key} cannot be resolved: {reason}") from None
