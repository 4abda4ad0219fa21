"""Checkpoints of a parameter-efficient run (finetune/peft.py): only what trained (the
head, the adapter) and a reference to the base weights it sat on (their sha256 and where
they came from). Loading checks that the run's own backbone has those weights, then takes
every other tensor from it, so Lightning's strict load sees a whole state dict.

Keys are the TransferModule's: `backbone.network.*`, `head.*`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferlab.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from transferlab.finetune.freezing import FreezeStrategy
    from transferlab.models.backbone import Backbone

BASE_KEY = "transferlab_base_weights"


def trained_names(
    backbone: Backbone, freeze: FreezeStrategy, new: dict[str, nn.Module | None]
) -> set[str]:
    """The state-dict keys of what trains: the strategy's parameters in the backbone, and
    every key of the `new` modules by their attribute names (the head, a domain
    discriminator)."""
    network = backbone.network
    trained = {id(p) for p in freeze.always_trained(network)}
    adapter = {f"backbone.network.{n}" for n, p in network.named_parameters() if id(p) in trained}
    present = {name: module for name, module in new.items() if module is not None}
    added = {f"{name}.{key}" for name, module in present.items() for key in module.state_dict()}
    return adapter | added


def keep_trained_only(
    checkpoint: dict[str, Any],
    backbone: Backbone,
    freeze: FreezeStrategy,
    new: dict[str, nn.Module | None],
) -> None:
    keep = trained_names(backbone, freeze, new)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    checkpoint[BASE_KEY] = {
        "sha256": backbone.base_sha256,
        "source": backbone.weights_source,
        "arch": backbone.name,
    }


def restore_base_weights(
    checkpoint: dict[str, Any], backbone: Backbone, whole: dict[str, torch.Tensor]
) -> None:
    """A checkpoint holding only what trained gets every other key of `whole` (the state
    dict of a model on `backbone`, keys as the checkpoint's), once the base weights are known
    to be the ones it trained on."""
    base = checkpoint.get(BASE_KEY)
    if base is None:
        return
    if not isinstance(base, dict) or base.get("sha256") != backbone.base_sha256:
        recorded = base.get("sha256") if isinstance(base, dict) else base
        source = base.get("source") if isinstance(base, dict) else "?"
        raise UserError(
            f"the checkpoint's adapter was trained on base weights {recorded} (from {source}), "
            f"but this run's {backbone.name} (from {backbone.weights_source}) has "
            f"{backbone.base_sha256}; load it onto the backbone it was trained on"
        )
    saved = checkpoint["state_dict"]
    checkpoint["state_dict"] = {**{k: v for k, v in whole.items() if k not in saved}, **saved}
