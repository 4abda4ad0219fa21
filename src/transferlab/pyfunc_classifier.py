"""The MLflow model every run with a neural head logs, as MLflow's "models from code": this
file is copied into the model (code/) and run by `mlflow.pyfunc.load_model`, so nothing is
unpickled, and it imports no transferlab module: the model loads and serves where transferlab
and the run's config are not at hand.

Input: a column `image` of raw images, each a file path or a uint8 array (H x W, H x W x 1,
3 or 4; nested lists in JSON). Each is preprocessed as the run's image files were
(`preprocessing.json`: to RGB, resize the shorter side, centre-crop, scale to [0, 1],
normalise), then the TorchScript network (backbone + head) gives logits. Output: per image,
the most probable `class` and the `probabilities` of every class, by class name.

Not imported by transferlab itself (set_model below is this module's only purpose).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from PIL import Image
from torchvision import transforms as T

IMAGE = "image"  # the input column
NETWORK, PREPROCESSING, BACKBONE = "network", "preprocessing", "backbone"  # artifact keys


class ImageClassifier(PythonModel):
    """Raw images in, class probabilities out (module docstring)."""

    def load_context(self, context) -> None:
        self.network = torch.jit.load(context.artifacts[NETWORK], map_location="cpu").eval()
        prep = json.loads(Path(context.artifacts[PREPROCESSING]).read_text())
        self.class_names: list[str] = prep["class_names"]
        self.input_size: int | None = prep["input_size"]
        self.trained_size = tuple(prep["input"]["shape"][2:])  # (H, W) the network saw
        steps: list[Any] = []
        if self.input_size is not None:  # as transferlab's Preprocessing.image_transform
            steps += [
                T.Resize(prep["resize_size"] or self.input_size),
                T.CenterCrop(self.input_size),
            ]
        self.transform = T.Compose([*steps, T.ToTensor(), T.Normalize(prep["mean"], prep["std"])])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        images = [self._preprocessed(i, image) for i, image in enumerate(_images(model_input))]
        with torch.inference_mode():
            logits = self.network(torch.stack(images))
        probabilities = torch.softmax(logits.float(), dim=1).numpy()
        return pd.DataFrame(
            {
                "class": [self.class_names[i] for i in probabilities.argmax(axis=1)],
                "probabilities": [
                    {name: float(p) for name, p in zip(self.class_names, row, strict=True)}
                    for row in probabilities
                ],
            }
        )

    def _preprocessed(self, index: int, image: Any) -> torch.Tensor:
        picture = _picture(index, image)
        if self.input_size is None and picture.size[::-1] != self.trained_size:
            height, width = self.trained_size
            raise ValueError(
                f"image {index} is {picture.height}x{picture.width}; this model takes "
                f"{height}x{width} images (it was trained without resizing)"
            )
        return self.transform(picture)


def _images(model_input: pd.DataFrame) -> list[Any]:
    """The images of the `image` column. MLflow makes `{"image": [path, path]}` one row
    holding the list of paths (a list of arrays, one row each): such a row is unpacked."""
    if IMAGE not in model_input.columns:
        raise ValueError(f"no {IMAGE!r} column; found {list(model_input.columns)}")
    images: list[Any] = []
    for cell in model_input[IMAGE]:
        paths = not isinstance(cell, str) and np.asarray(cell).dtype.kind == "U"
        images += [str(path) for path in np.asarray(cell).ravel()] if paths else [cell]
    return images


def _picture(index: int, image: Any) -> Image.Image:
    """A file path opened, or a uint8 array as an image; RGB, as in training."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(
                f"image {index}: expected a file path or uint8 pixels (0-255), got "
                f"{pixels.dtype} values"
            )
        pixels = pixels.astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ValueError(f"image {index}: expected H x W [x 1, 3 or 4] pixels, got {pixels.shape}")
    return Image.fromarray(pixels).convert("RGB")


set_model(ImageClassifier())
