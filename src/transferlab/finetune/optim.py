"""Optimizer and scheduler built from config, with param groups per backbone stage.

Every group exists from the first step (frozen stages just get no gradient), so schedulers
see a fixed set of groups for the whole run and a resumed run restores them as they were.
transferlab's own keys sit in their own nodes, taken off before torch sees the rest:
`optimizer.param_groups` (`GroupOptions`) and `scheduler.lightning` (`lightning_scheduler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from transferlab.components import OptionError, is_number, number, options_of
from transferlab.models.backbone import Backbone


@dataclass(frozen=True)
class GroupOptions:
    """`optimizer.param_groups`, typed: how the parameters are grouped and each group's rate
    set. Its fields are the node's keys (validation accepts these and no others)."""

    backbone_lr_mult: float = 1.0  # the backbone's rate: lr x this (the head always gets lr)
    layer_decay: float | None = None  # each stage a further decay^i, i: its distance from the head
    decay_bias_and_norm: bool = False  # false: biases and norm weights get no weight decay

    def __post_init__(self) -> None:
        self.check_options(self.backbone_lr_mult, self.layer_decay)

    @staticmethod
    def check_options(backbone_lr_mult: float = 1.0, layer_decay: float | None = None) -> None:
        number("backbone_lr_mult", backbone_lr_mult)  # 0: a frozen backbone, by learning rate
        if layer_decay is not None and (not is_number(layer_decay) or not 0 < layer_decay <= 1):
            raise OptionError("layer_decay", layer_decay, "must be in (0, 1], or null for none")


# torch's optimizers and schedulers cannot carry a `check_options`: the options of theirs that
# torch would take without a word and fail on later (a division by a zero step size at the
# end of an epoch) or refuse without naming the key, by name. Checked by validation.
TORCH_OPTION_BOUNDS = {"weight_decay": 0, "momentum": 0, "step_size": 1, "T_max": 1}


def check_torch_options(group: str, options: dict[str, Any]) -> None:
    """Raises a UserError naming `group.option` for a value below its bound."""
    with options_of(group):
        for option, low in TORCH_OPTION_BOUNDS.items():
            if option in options:
                number(option, options[option], low, whole=low == 1)


def stage_lr(lr: float, options: GroupOptions, num_stages: int, stage: int) -> float:
    """Discriminative learning rates: the backbone at lr x backbone_lr_mult and, with
    `layer_decay`, each stage a further decay^i, i its distance from the head (the stage
    next to the head: i=1). The head always gets lr."""
    distance_from_head = num_stages - stage
    return lr * options.backbone_lr_mult * (options.layer_decay or 1.0) ** distance_from_head


def param_groups(
    lr: float,
    options: GroupOptions,
    backbone: Backbone,
    head: nn.Module,
    adaptation: nn.Module | None = None,
) -> list[dict]:
    """One group per backbone stage and one for the head (and one for an adaptation
    method's own parameters, a domain discriminator: at lr, like the head), each split into
    the parameters that get weight decay and those that do not (biases and norm weights,
    unless `decay_bias_and_norm`): pulling a norm's scale or a bias toward 0 only hurts."""
    count = backbone.num_stages
    stages = [
        (f"stage{i}", i, backbone.stage_parameters(i), stage_lr(lr, options, count, i))
        for i in range(count)
    ]
    new = [("head", None, list(head.parameters()), lr)]
    if adaptation is not None:
        new.append(("adapt", None, list(adaptation.parameters()), lr))
    groups = []
    for name, stage, params, rate in [*stages, *new]:
        decayed, undecayed = _split_by_decay(params, options.decay_bias_and_norm)
        groups.append({"params": decayed, "lr": rate, "name": name, "stage": stage})
        groups.append(
            {"params": undecayed, "lr": rate, "name": f"{name}-no_decay", "stage": stage}
            | {"weight_decay": 0.0}
        )
    return [g for g in groups if g["params"]]


def _split_by_decay(params: list[nn.Parameter], decay_all: bool):
    if decay_all:
        return params, []
    return [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]


def optimizer_arguments(cfg: DictConfig) -> tuple[dict[str, Any], GroupOptions]:
    """The optimizer node less its `param_groups` node (what torch's optimizer takes), and
    that node, typed (absent: the defaults)."""
    arguments = OmegaConf.to_container(cfg, resolve=True)
    return arguments, GroupOptions(**arguments.pop("param_groups", None) or {})


def build_optimizer(
    cfg: DictConfig, backbone: Backbone, head: nn.Module, adaptation: nn.Module | None = None
) -> torch.optim.Optimizer:
    arguments, options = optimizer_arguments(cfg)
    groups = param_groups(arguments["lr"], options, backbone, head, adaptation)
    # partial first: Hydra would otherwise turn the param-group dicts into configs
    return instantiate(arguments, _partial_=True)(groups)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Lightning's lr_scheduler config for `cfg` less its `lightning` node (what torch's
    scheduler takes); None for a constant rate."""
    if cfg.get("_target_") is None:
        return None
    arguments = OmegaConf.to_container(cfg, resolve=True)
    lightning = arguments.pop("lightning", None) or {}
    return lightning_scheduler(instantiate(arguments, _partial_=True)(optimizer), **lightning)


def lightning_scheduler(scheduler: Any, /, monitor: str | None = None) -> dict[str, Any]:
    """Stepped once per epoch. The keyword arguments are `scheduler.lightning`'s keys:
    `monitor` is the metric Lightning passes to the scheduler's step (ReduceLROnPlateau's),
    not an argument of the torch scheduler."""
    config = {"scheduler": scheduler, "interval": "epoch"}
    if monitor:
        config["monitor"] = monitor
    return config
