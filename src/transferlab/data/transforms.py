"""Preprocessing a backbone expects: normalisation and input size.

It comes from the pretrained weights' metadata when there is one, so images reach the
network as they did during pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int | None = 224  # None: keep the images' own size
    resize_size: int | None = None  # resize before the centre crop (ImageNet-style); None: size

    def as_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "resize_size": self.resize_size,
        }

    def image_transform(self) -> T.Compose:
        """Per-image transform for PIL images read from disk."""
        steps: list = [T.Lambda(_to_rgb)]
        if self.input_size is not None:
            steps += [T.Resize(self.resize_size or self.input_size), T.CenterCrop(self.input_size)]
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def tensor_transform(self, images: torch.Tensor) -> torch.Tensor:
        """Whole-batch transform for in-memory images (N, C, H, W) with values in [0, 1].

        Done once for a whole dataset rather than per sample: no PIL round trip per step.
        Grey images are resized as one channel; normalising broadcasts them to three.
        """
        if self.input_size is not None and images.shape[-1] != self.input_size:
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((images - mean) / std).contiguous()


def _to_rgb(image):
    return image.convert("RGB")
