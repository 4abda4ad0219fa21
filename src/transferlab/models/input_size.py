"""`backbone.input_size`, shared by every backbone builder: its bounds, and the preprocessing
it gives (the resize keeps its ratio to the crop)."""

from __future__ import annotations

from dataclasses import replace

from transferlab.components import whole_number
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

MAX_INPUT_SIZE = 4096  # px a side; backbones are pretrained at <= 1024, a 4096 image is 200 MB


def check_input_size(input_size: int | None = None) -> None:
    """Any backbone's `input_size` (None: from the weights)."""
    whole_number("input_size", input_size, 8, MAX_INPUT_SIZE, optional=True)


def resized(preprocessing: Preprocessing, size: int, arch: str, fixed: bool) -> Preprocessing:
    """`backbone.input_size` applied to an architecture's preprocessing (torchvision's and
    timm's alike); `fixed`: the network only takes the size it was trained at."""
    if fixed and size != preprocessing.input_size:
        raise UserError(
            f"backbone.input_size={size}: {arch} only takes {preprocessing.input_size} px inputs"
        )
    crop, resize = preprocessing.input_size, preprocessing.resize_size
    resize = round(size * resize / crop) if crop and resize else None
    return replace(preprocessing, input_size=size, resize_size=resize)
