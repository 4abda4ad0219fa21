"""Freeze strategies: which backbone stages train at a given epoch (`freeze._target_`).

The state is derived from the strategy's options and the epoch alone, never accumulated, so
a run resumed from a checkpoint freezes exactly what the uninterrupted run froze. The
optimizer holds every parameter from the start; a frozen parameter simply gets no gradient.
A user's own strategy subclasses FreezeStrategy. No torch here: validation builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transferlab.components import OptionError, is_number, whole_number

if TYPE_CHECKING:
    from torch import nn

    from transferlab.models.backbone import Backbone

# Stage counts a strategy is asked about before any backbone is built: more than any
# built-in backbone has (see models/backbones.py).
STAGE_COUNTS = range(1, 17)


class FreezeStrategy:
    """Freezes nothing unless a subclass says otherwise; options are `__init__` keywords."""

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        """Indices (0 = nearest the input) of the stages frozen during `epoch`."""
        return set()

    def lr_factor(self, num_stages: int, stage: int, epoch: float) -> float:
        """Multiplies the scheduled learning rate of `stage` during this step (`epoch` may
        be fractional: the position within the epoch)."""
        return 1.0

    def check_fits(self, max_epochs: int) -> None:
        """Raises OptionError for a planned change after the last epoch: it would silently
        never happen."""

    def check_fits_backbone(self, num_stages: int, arch: str) -> None:
        """Raises OptionError for stage counts the built backbone does not have."""

    def adapt(self, backbone: Backbone) -> None:
        """Changes the built backbone before training (a parameter-efficient method adds
        its layers: finetune/peft.py); raises a UserError where it cannot."""

    def always_trained(self, network: nn.Module) -> list[nn.Parameter]:
        """The network's parameters that train in every epoch whatever their stage (an
        adapter's, BitFit's biases)."""
        return []

    def is_always_frozen(self, num_stages: int, max_epochs: int) -> bool:
        """True when no backbone stage ever trains: its features can be computed once."""
        every = set(range(num_stages))
        return all(every <= self.frozen_stages(num_stages, e) for e in range(max_epochs))

    def never_trains_backbone(self, max_epochs: int) -> bool:
        """Always frozen whatever the backbone's stage count: what a head fitted on frozen
        features needs, known before the backbone is built."""
        return all(self.is_always_frozen(n, max_epochs) for n in STAGE_COUNTS)


class FullFineTune(FreezeStrategy):
    """freeze=none: every stage trains from the first epoch."""


class LinearProbe(FreezeStrategy):
    """Only the head trains."""

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        return set(range(num_stages))


class Partial(FreezeStrategy):
    """The first `k` stages (from the input) stay frozen."""

    def __init__(self, k: int = 2):
        self.check_options(k=k)
        self.k = k

    @staticmethod
    def check_options(k: int) -> None:
        whole_number("k", k, 0)

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        return set(range(min(self.k, num_stages)))

    def check_fits_backbone(self, num_stages: int, arch: str) -> None:
        if self.k > num_stages:
            raise OptionError(
                "k", self.k, f"is beyond {arch}'s {num_stages} stages; use 0 to {num_stages}"
            )


class FreezeUnfreeze(FreezeStrategy):
    """The backbone stays frozen until epoch `unfreeze_at`, then all of it trains."""

    def __init__(self, unfreeze_at: int = 2):
        self.check_options(unfreeze_at=unfreeze_at)
        self.unfreeze_at = unfreeze_at

    @staticmethod
    def check_options(unfreeze_at: int) -> None:
        whole_number("unfreeze_at", unfreeze_at, 0)

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        return set(range(num_stages)) if epoch < self.unfreeze_at else set()

    def check_fits(self, max_epochs: int) -> None:
        _before_the_end("unfreeze_at", self.unfreeze_at, self.unfreeze_at, max_epochs)


class Gradual(FreezeStrategy):
    """ULMFiT-style: at each milestone the frozen stage nearest the head starts training,
    its learning rate ramped 0 -> 1 linearly over `warmup_epochs`, so fresh gradients do
    not wreck pretrained weights."""

    def __init__(self, milestones: Sequence[int] = (1, 2, 3), warmup_epochs: int = 0):
        milestones = _listed(milestones)
        self.check_options(milestones=milestones, warmup_epochs=warmup_epochs)
        self.milestones, self.warmup_epochs = tuple(milestones), warmup_epochs

    @staticmethod
    def check_options(milestones: Sequence[int], warmup_epochs: int) -> None:
        milestones = _listed(milestones)
        epochs = "must list epochs (whole numbers >= 0) in increasing order, e.g. [1, 2, 3]"
        listed = isinstance(milestones, list) and milestones
        if not listed or not all(is_number(m, whole=True) and m >= 0 for m in milestones):
            raise OptionError("milestones", milestones, epochs)
        if milestones != sorted(milestones):
            raise OptionError("milestones", milestones, epochs)
        whole_number("warmup_epochs", warmup_epochs, 0)

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        unfrozen = sum(m <= epoch for m in self.milestones)
        return set(range(max(num_stages - unfrozen, 0)))

    def lr_factor(self, num_stages: int, stage: int, epoch: float) -> float:
        order_from_head = num_stages - 1 - stage
        if not self.warmup_epochs or order_from_head >= len(self.milestones):
            return 1.0
        started = epoch - self.milestones[order_from_head]
        return min(max(started / self.warmup_epochs, 0.0), 1.0)

    def check_fits(self, max_epochs: int) -> None:
        _before_the_end("milestones", list(self.milestones), self.milestones[-1], max_epochs)

    def check_fits_backbone(self, num_stages: int, arch: str) -> None:
        if len(self.milestones) > num_stages:
            raise OptionError(
                "milestones",
                list(self.milestones),
                f"has {len(self.milestones)} epochs but {arch} has {num_stages} stages to "
                f"unfreeze; give at most {num_stages}",
            )


def _listed(milestones) -> list:
    """A list of the values (Hydra passes a ListConfig); anything else is left as it is,
    for check_options to refuse."""
    is_list = isinstance(milestones, Sequence) and not isinstance(milestones, str)
    return list(milestones) if is_list else milestones


def _before_the_end(option: str, value, last: int, max_epochs: int) -> None:
    if last >= max_epochs:
        raise OptionError(
            option,
            value,
            f"has epoch {last}, beyond trainer.max_epochs={max_epochs} (epochs count from 0); "
            f"use epochs below {max_epochs}",
        )
