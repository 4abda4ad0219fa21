"""Validation's second pass: what the code accepts. Every node with a `_target_` is
checked against its target: its keys against the signature (the signature is the schema),
its values by the target's own `check_options` (see transferlab.components), then torch
makes the optimizer and scheduler once for a dummy parameter and Lightning names its
accelerators and strategies. Imports torch and Lightning, which a valid config imports
right after anyway.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from transferlab.components import locate, options_of
from transferlab.config_keys import HYDRA_KEYS, known_keys
from transferlab.errors import UserError, one_of

# Groups whose `_target_` is a transferlab component, and the arguments the code fills in
COMPONENT_GROUPS = {
    "head": ("in_features", "num_classes"),
    "freeze": (),
    "regularizer": ("backbone", "head"),
    "adapt": ("feature_dim", "num_classes"),
}
OWN_KEYS = {"adapt": ("selection",)}  # transferlab's, taken off before the target is called


# What torch raises for options it refuses (Hydra wraps errors in the call it makes)
REFUSED = (InstantiationException, TypeError, ValueError, RuntimeError)


def check_targets(cfg: DictConfig) -> None:
    """Hydra passes every key of a node to its `_target_`: a key the target does not take
    would only fail when it is called, mid-run."""
    from transferlab.finetune.optim import GroupOptions, lightning_scheduler

    check_target(cfg.backbone, "backbone")
    for group, filled in COMPONENT_GROUPS.items():
        node = cfg.get(group) or {"_target_": None}  # a run recorded before the group existed
        check_target(node, group, filled=filled, own_keys=OWN_KEYS.get(group, ()))
    check_target(cfg.optimizer, "optimizer", ("params",), own=("param_groups", GroupOptions))
    check_target(cfg.scheduler, "scheduler", ("optimizer",), own=("lightning", lightning_scheduler))
    check_data_and_trainer(cfg)
    for name, callback in cfg.callbacks.items():
        if callback is None:
            continue  # turned off
        if not OmegaConf.is_dict(callback) or "_target_" not in callback:
            raise UserError(
                f"callbacks.{name}={callback!r} must be a callback config with a _target_, "
                "or null to turn it off"
            )
        check_target(callback, f"callbacks.{name}")


def check_data_and_trainer(cfg: DictConfig) -> None:
    """The groups a training run and a ranking (transferlab-rank) share."""
    from transferlab.data.splits import TaskSpec
    from transferlab.gpu_options import GpuOptions

    check_target(cfg.dataset, "dataset", own=("task", TaskSpec))
    if cfg.get("target_domain", {}).get("_target_") is not None:
        check_target(cfg.target_domain, "target_domain", own=("task", TaskSpec))
    check_target(cfg.trainer, "trainer", own=("gpu", GpuOptions))


def check_target(
    node: DictConfig,
    key: str,
    filled: Iterable[str] = (),
    own: tuple[str, Callable] | None = None,
    own_keys: Iterable[str] = (),
) -> None:
    """`own`: transferlab's node in the group (`dataset.task`, ...) and what its keys are the
    parameters of; `own_keys`: transferlab's plain values there (`adapt.selection`, checked
    by the first pass). Both are taken off before the `_target_` is called."""
    path = node.get("_target_")
    if path is None:  # scheduler=none: a constant learning rate
        known_keys(node, f"{key}.", own_keys, f"{key} without a _target_")
        return
    target = locate(path, key)
    _check_own_values(node, key, target, filled)  # first: its messages are the precise ones
    transferlab_keys = (*(own[:1] if own else ()), *own_keys)
    _check_options(node, key, target, path, filled, transferlab_keys)
    if own is not None and own[0] in node:
        _check_own_node(node[own[0]], f"{key}.{own[0]}", own[1])


def _check_own_node(node, key: str, schema: Callable) -> None:
    """Its keys are the parameters of `schema` (e.g. TaskSpec for `dataset.task`)."""
    if not OmegaConf.is_dict(node):
        raise UserError(f"{key}={node!r} must hold keys: {one_of(_parameters(schema))}")
    _check_own_values(node, key, schema, ())
    _check_options(node, key, schema, key)


def _check_options(
    node: DictConfig,
    key: str,
    fn: Callable,
    owner: str,
    filled: Iterable[str] = (),
    own: Iterable[str] = (),
    implied: Iterable[str] = HYDRA_KEYS,
) -> None:
    """The keys must be parameters of `fn` (or `own` keys, read by transferlab), each of
    the type of its default where that is a number or a boolean: the signature is the
    schema. A value the callable cannot take would otherwise fail mid-run."""
    parameters = _parameters(fn, filled)
    if parameters is None:
        return
    known_keys(node, f"{key}.", [*parameters, *own], owner, implied=implied)
    for name, default in parameters.items():
        value = node.get(name)
        if value is None:
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{key}.{name}={value!r} must be true or false")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not number:
            raise UserError(f"{key}.{name}={value!r} must be a number")


def _parameters(fn: Callable, filled: Iterable[str] = ()) -> dict | None:
    """The keyword parameters of `fn` (less those the code fills in) and their defaults;
    None: it takes any keyword."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters if p.kind in named and p.name not in filled}


def _check_own_values(node: DictConfig, key: str, target: Callable, filled: Iterable[str]) -> None:
    """The target's own `check_options` (see transferlab.components), called with the node's
    values over the signature's defaults; only the options it names, unless it takes any."""
    check = getattr(target, "check_options", None)
    options = _parameters(target, filled)
    if check is None or options is None:
        return
    values = OmegaConf.to_container(node, resolve=True)
    options = {
        name: values.get(name, default)
        for name, default in options.items()
        if name in values or default is not inspect.Parameter.empty
    }
    accepted = _parameters(check)
    if accepted is not None:
        options = {name: value for name, value in options.items() if name in accepted}
    with options_of(key):
        check(**options)


def check_lightning_names(trainer: DictConfig) -> None:
    """Lightning refuses an unknown accelerator or strategy only when the Trainer is made."""
    if trainer.get("_target_") != "pytorch_lightning.Trainer":
        return
    from transferlab.compat import accelerator_names, strategy_names

    names = {"accelerator": accelerator_names(), "strategy": strategy_names()}
    for key, accepted in names.items():
        value = trainer.get(key, "auto")
        if not OmegaConf.is_dict(value) and value not in accepted:  # a dict: an instance
            raise UserError(f"trainer.{key}={value!r} is unknown; use {one_of(accepted)}")


def try_optimizer_and_scheduler(cfg: DictConfig) -> None:
    """torch checks the values of their options (ranges, combinations) when they are made:
    made here for one dummy parameter, so a refused value fails before any run."""
    import torch
    from hydra.utils import instantiate

    from transferlab.finetune.optim import (
        build_scheduler,
        check_torch_options,
        optimizer_arguments,
    )

    options, _ = optimizer_arguments(cfg.optimizer)
    check_torch_options("optimizer", options)
    check_torch_options("scheduler", OmegaConf.to_container(cfg.scheduler, resolve=True))
    try:
        optimizer = instantiate(options, _partial_=True)([torch.nn.Parameter(torch.zeros(1))])
    except REFUSED as error:
        raise _refused("optimizer", options, error) from None
    try:
        build_scheduler(cfg.scheduler, optimizer)
    except REFUSED as error:
        scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
        scheduler.pop("lightning", None)  # not torch's
        raise _refused("scheduler", scheduler, error) from None


def _refused(group: str, options: dict, error: Exception) -> UserError:
    """`group: target(key=value, ...) is refused: <torch's reason>`."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in options.items() if k != "_target_")
    reason = str(error).partition("\n")[0]
    return UserError(f"{group}: {options['_target_']}({arguments}) is refused: {reason}")
