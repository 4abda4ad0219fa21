"""The LightningModule: backbone + new head, trained under a freeze strategy, with an
optional regulariser toward the source, label smoothing and MixUp / CutMix, and optional
unsupervised adaptation to a target domain."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from pytorch_lightning.strategies import Strategy
from torch import nn
from torchvision.transforms import v2

from transferlab.adaptation.base import DomainAdaptation, prediction_entropy
from transferlab.adaptation.selection import dev_risk
from transferlab.errors import TrainingDiverged
from transferlab.finetune.adapted_checkpoint import keep_trained_only, restore_base_weights
from transferlab.finetune.freezing import FreezeStrategy
from transferlab.finetune.optim import build_optimizer, build_scheduler
from transferlab.models.backbone import Backbone


class TransferModule(pl.LightningModule):
    """`selection` (None: no target domain) is how the run chooses without target labels:
    with a target domain, validation also scores its images (a second loader) by the mean
    entropy of the predictions (target/val/entropy) and deep embedded validation
    (target/val/dev, from the source validation's losses), and its accuracy and loss only
    for the oracle, whose loader alone carries labels. `adaptation` adds its weighted loss
    to each step on a pair of source and target batches."""

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        num_classes: int,
        freeze: FreezeStrategy,
        optimizer: DictConfig,
        scheduler: DictConfig,
        regularizer: nn.Module | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        adaptation: DomainAdaptation | None = None,
        selection: str | None = None,
    ):
        super().__init__()
        self.adaptation = adaptation
        self.selection = selection
        self.backbone = backbone
        self.head = head
        self.regularizer = regularizer
        self.freeze = freeze
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.mix = _batch_mixing(num_classes, mixup_alpha, cutmix_alpha)
        self.epoch_sums: dict[str, EpochSums] = {}
        self.loss_guard: NonFiniteLossGuard | None = None
        self.test_predictions: list[torch.Tensor] = []
        self.test_targets: list[torch.Tensor] = []
        # per domain, each validation batch's features (and the source's per-image losses)
        self.validation_features: dict[str, list[tuple[torch.Tensor, ...]]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    # --- freezing: derived from the epoch, re-applied whenever the mode changes ----------

    def frozen_stages(self) -> set[int]:
        return self.freeze.frozen_stages(self.backbone.num_stages, self.current_epoch)

    def train(self, mode: bool = True):
        """Lightning calls .train() around validation; frozen BatchNorm must stay in eval."""
        super().train(mode)
        if mode:
            self._apply_freeze()
        return self

    def _apply_freeze(self) -> None:
        frozen = self.frozen_stages()
        for i in range(self.backbone.num_stages):
            for param in self.backbone.stage_parameters(i):
                param.requires_grad_(i not in frozen)
            if i in frozen:
                for module in self.backbone.stage_modules(i):
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        for param in self.freeze.always_trained(self.backbone.network):
            param.requires_grad_(True)
        self.backbone.source_head.eval()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Applies the freeze strategy's learning-rate factors (e.g. the warm-up of newly
        unfrozen stages) for this step only, so schedulers keep seeing (and stepping) the
        learning rates they set."""
        position = epoch + batch_idx / max(self.trainer.num_training_batches, 1)
        stages = self.backbone.num_stages
        factors = [
            1.0
            if group.get("stage") is None
            else self.freeze.lr_factor(stages, group["stage"], position)
            for group in optimizer.param_groups
        ]
        if all(factor == 1.0 for factor in factors):  # nothing to change: the plain step
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group, factor in zip(optimizer.param_groups, factors, strict=True):
            group["lr"] *= factor
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr

    # --- steps -------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Adapting, `batch` is {"source": (images, labels), "target": (images,)}: one pass
        of the network over both, the classification loss on the source only."""
        if isinstance(batch, dict):
            (images, targets), (target_images,) = batch["source"], batch["target"]
        else:
            (images, targets), target_images = batch, None
        mixed_images, soft_targets = self.mix(images, targets) if self.mix else (images, targets)
        inputs = mixed_images if target_images is None else torch.cat([mixed_images, target_images])
        features = self.backbone(inputs)
        logits = self.head(features)
        size = len(targets)
        loss = self.criterion(logits[:size], soft_targets)
        sums = self.epoch_sums["train"]
        sums.add(loss, logits[:size], targets)
        if target_images is not None:
            progress = self.global_step / max(self.trainer.estimated_stepping_batches, 1)
            adapt = self.adaptation(
                features[:size], features[size:], logits[:size], logits[size:], min(progress, 1.0)
            )
            sums.add_extra("adapt", adapt, size)
            loss = loss + self.adaptation.weight * adapt
        if self.regularizer is not None:
            penalty = self.regularizer(mixed_images, features[:size])
            sums.add_extra("reg", penalty, size)
            loss = loss + penalty
        self.loss_guard.record(loss, self.global_step, self.current_epoch)
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # the target domain's images (labelled for the oracle only)
            return self._target_validation_step(batch)
        images, targets = batch
        features = self.backbone(images)
        logits = self.head(features)
        self.epoch_sums["val"].add(self.criterion(logits, targets), logits, targets)
        if self.selection is not None:  # what deep embedded validation weighs
            losses = F.cross_entropy(logits.float(), targets, reduction="none")
            self._keep_for_validation("source", features, losses)

    def _target_validation_step(self, batch) -> None:
        features = self.backbone(batch[0])
        logits = self.head(features)
        sums = self.epoch_sums["target/val"]
        if len(batch) == 2:
            sums.add(self.criterion(logits, batch[1]), logits, batch[1])
        else:
            sums.add_unlabelled(len(logits))
        entropy = prediction_entropy(logits.float().softmax(dim=1)).mean()
        sums.add_extra("entropy", entropy, len(logits))
        self._keep_for_validation("target", features)

    def _keep_for_validation(self, domain: str, features: torch.Tensor, *extra) -> None:
        kept = self.validation_features.setdefault(domain, [])
        kept.append(tuple(t.detach().float().cpu() for t in (features, *extra)))

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, targets = batch
        logits = self(images)
        split = "target/test" if dataloader_idx == 1 else "test"
        self.epoch_sums[split].add(self.criterion(logits, targets), logits, targets)
        if dataloader_idx == 0:
            self.test_predictions.append(logits.argmax(dim=1).cpu())
            self.test_targets.append(targets.cpu())

    # --- epoch metrics: summed per step, logged once per epoch ---------------------------
    # Lightning's `self.log` costs ~0.7 ms a call on a CPU (it walks its result objects each
    # time): more than a small model's whole step. Sums of tensors cost microseconds.

    def on_train_epoch_start(self) -> None:
        self._apply_freeze()
        self.epoch_sums["train"] = EpochSums(self.device)
        deferred = self.device.type != "cpu" or self.trainer.world_size > 1
        self.loss_guard = NonFiniteLossGuard(self.device, deferred)

    def on_validation_epoch_start(self) -> None:
        self.epoch_sums["val"] = EpochSums(self.device)
        self.epoch_sums["target/val"] = EpochSums(self.device, self.selection == "oracle")
        self.validation_features = {}

    def on_test_epoch_start(self) -> None:
        self.epoch_sums["test"] = EpochSums(self.device)
        self.epoch_sums["target/test"] = EpochSums(self.device)
        self.test_predictions, self.test_targets = [], []

    def on_train_epoch_end(self) -> None:
        self.loss_guard.check(self.trainer.strategy, self.current_epoch)
        self._log_epoch("train")
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # 16-mixed: fp16 gradients are scaled
            self.log("train/grad_scale", scaler.get_scale())  # halved after each overflow

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if self.selection is not None:
            self._log_epoch("val", "source/val")  # the same, named beside target/val/*
            self._log_epoch("target/val")
            self._log_deep_embedded_validation()

    def _log_deep_embedded_validation(self) -> None:
        """The source validation's loss, weighted by how target-like each image's features
        are (see adaptation.selection). Under DDP each process weighs its own share and
        the processes' risks are averaged."""
        kept = self.validation_features
        if "source" not in kept or "target" not in kept:
            return  # a sanity check's batches, or an empty split: nothing to weigh
        source_features, losses = (torch.cat(parts) for parts in zip(*kept["source"], strict=True))
        target_features = torch.cat([features for (features,) in kept["target"]])
        risk = dev_risk(source_features, target_features, source_features, losses)
        risk = torch.tensor(risk, device=self.device)
        self.log("target/val/dev", self.trainer.strategy.reduce(risk, reduce_op="mean"))

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        if self.selection is not None:
            self._log_epoch("target/test")
        if self.trainer.world_size > 1:  # each DDP process scored its share of the images
            self.test_predictions = _gathered(self, self.test_predictions)
            self.test_targets = _gathered(self, self.test_targets)

    def _log_epoch(self, split: str, name: str | None = None) -> None:
        """Means over every image of the epoch, on all ranks together (sums are reduced),
        logged as `<name or split>/<metric>`."""
        reduced = {
            metric: self.trainer.strategy.reduce(value, reduce_op="sum")
            for metric, value in self.epoch_sums[split].sums.items()
        }
        count = reduced.pop("count")
        if count == 0:
            return  # an empty split (e.g. no validation images): nothing to average
        for metric, total in reduced.items():
            self.log(f"{name or split}/{metric}", total / count)

    # --- checkpoints: a parameter-efficient run's hold what trained, and its base's digest --

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.backbone.base_sha256 is not None:
            new = {"head": self.head, "adaptation": self.adaptation}
            keep_trained_only(checkpoint, self.backbone, self.freeze, new)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_base_weights(checkpoint, self.backbone, self.state_dict())

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_cfg, self.backbone, self.head, self.adaptation)
        scheduler = build_scheduler(self.scheduler_cfg, optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _gathered(module: pl.LightningModule, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every process's 1-D `parts`, one tensor per process, on the CPU. all_gather needs
    the same shape everywhere: each share is padded to the longest, then cut back."""
    mine = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    mine = mine.to(module.device)
    lengths = module.all_gather(torch.tensor(len(mine), device=module.device))
    padded = mine.new_zeros(int(lengths.max()))
    padded[: len(mine)] = mine
    shares = module.all_gather(padded)
    return [share[:length].cpu() for share, length in zip(shares, lengths.tolist(), strict=True)]


def _batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float):
    """torchvision's batch MixUp / CutMix (one of the two per batch when both are on).
    They return soft targets, which the cross-entropy takes as class probabilities."""
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


class EpochSums:
    """Per-epoch sums of loss, correct predictions (and extras such as the regulariser),
    weighted by images, so that their means are exact whatever the batch sizes."""

    def __init__(self, device: torch.device, labelled: bool = True):
        """Unlabelled (a target domain's images): only the image count and extras."""
        zero = torch.zeros((), device=device)
        names = ("loss", "acc", "count") if labelled else ("count",)
        self.sums = {name: zero.clone() for name in names}

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        size = len(targets)
        self.sums["loss"] += loss.detach() * size
        self.sums["acc"] += (logits.detach().argmax(dim=1) == targets).sum()
        self.sums["count"] += size

    def add_unlabelled(self, size: int) -> None:
        self.sums["count"] += size

    def add_extra(self, name: str, value: torch.Tensor, size: int) -> None:
        self.sums[name] = self.sums.get(name, 0) + value.detach() * size


class NonFiniteLossGuard:
    """Stops training at the first NaN / inf training loss, naming its step.

    In one CPU process reading the loss costs under a microsecond, so it raises at once,
    before the optimizer step uses the loss. Reading a GPU tensor waits for the device, which
    would cost throughput every step, and DDP processes must stop together: there
    (`deferred`) the first bad step is only recorded on the device (torch.where, no sync),
    and `check` reads it, over all processes, at the end of the epoch.
    """

    NONE = torch.iinfo(torch.int64).max  # no bad step: ignored by the minimum over processes

    def __init__(self, device: torch.device, deferred: bool):
        self.deferred = deferred
        self.first_step = torch.full((), self.NONE, dtype=torch.int64, device=device)
        self.value = torch.zeros((), device=device)

    def record(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        if not self.deferred:
            if not math.isfinite(value := loss.item()):
                raise TrainingDiverged.at(value, step, epoch)
            return
        keep = torch.isfinite(loss) | (self.first_step != self.NONE)
        self.first_step = torch.where(keep, self.first_step, step)
        self.value = torch.where(keep, self.value, loss.detach().float())

    def check(self, strategy: Strategy, epoch: int) -> None:
        step = int(strategy.reduce(self.first_step, reduce_op="min"))
        if step != self.NONE:
            value = float(strategy.reduce(self.value, reduce_op="sum"))  # nan if any is nan
            raise TrainingDiverged.at(value, step, epoch)
