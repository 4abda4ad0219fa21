"""The LightningModule: backbone + new head, trained under a freeze strategy."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transferlab.finetune.freezing import frozen_stages
from transferlab.finetune.optim import build_optimizer, build_scheduler
from transferlab.models.backbones import Backbone


class TransferModule(pl.LightningModule):
    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        freeze: DictConfig,
        optimizer: DictConfig,
        scheduler: DictConfig,
        num_classes: int,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze = OmegaConf.to_container(freeze, resolve=True)
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.criterion = nn.CrossEntropyLoss()
        # ModuleDict keys may not shadow Module attributes such as .train: hence "<split>_acc".
        self.accuracy = nn.ModuleDict(
            {
                f"{split}_acc": MulticlassAccuracy(num_classes, average="micro")
                for split in ("train", "val", "test")
            }
        )
        self.test_predictions: list[torch.Tensor] = []
        self.test_targets: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    # --- freezing: derived from the epoch, re-applied whenever the mode changes ----------

    def frozen_stages(self) -> set[int]:
        return frozen_stages(self.freeze, self.backbone.num_stages, self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self._apply_freeze()

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
        self.backbone.source_head.eval()

    # --- steps -------------------------------------------------------------------------

    def _step(self, batch, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        accuracy = self.accuracy[f"{split}_acc"]
        accuracy(logits, targets)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=len(targets))
        self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True)
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self.test_predictions, self.test_targets = [], []

    def test_step(self, batch, batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.test_predictions.append(logits.argmax(dim=1).cpu())
        self.test_targets.append(batch[1].cpu())

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_cfg, self.backbone, self.head)
        scheduler = build_scheduler(self.scheduler_cfg, optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
