"""Printed digits: a synthetic source domain for scikit-learn's handwritten `digits`.

Digits 0-9 are rendered by FreeType from every font in matplotlib's own font folder that
holds them (so the same everywhere matplotlib's version is), with seeded random sizes,
rotations, shifts, stroke widths and blur, then reduced as the UCI optdigits images that
sklearn ships were (Alpaydin & Kaynak 1998): a 32x32 binary bitmap, size-normalised, counted
in non-overlapping 4x4 blocks to 8x8 values in 0..16. Printed -> handwritten is a
synthetic-to-real shift like SynDigits -> SVHN (Ganin & Lempitsky 2015): same classes, same
format, different strokes. The images are cached on disk, keyed by the options and the
generator's version, and checked when read back.
"""

from __future__ import annotations

import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from transferlab.atomic import write_atomically
from transferlab.components import OptionError, whole_number
from transferlab.data.datasets import DatasetParts, sixteen_level_parts
from transferlab.data.feature_cache import json_digest
from transferlab.data.transforms import Preprocessing

# Bump when the images for the same options change: old cache entries then stop matching.
GENERATOR_VERSION = 1
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BITMAP, BLOCK = 32, 4  # optdigits: 32x32 bitmaps counted in 4x4 blocks -> 8x8, 0..16
FONT_SIZES = (24, 32, 48)  # px: FreeType hints and rounds each differently
MAX_ROTATION = 12.0  # degrees either way
MAX_SHIFT = 2  # px of the 32x32 bitmap, each axis
DEFAULT_CACHE = Path.home() / ".cache" / "transferlab" / "printed_digits"


def digit_fonts() -> list[Path]:
    """The fonts in matplotlib's own folder whose glyphs for '0'..'9' are digits (by glyph
    name, old-style figures included): not the TeX symbol fonts (cmsy10 maps '1' to an
    infinity sign) nor fonts without them. Sorted by file name, so the order is fixed."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for path in sorted(folder.glob("*.ttf")):
        font = FT2Font(str(path))
        names = [font.get_glyph_name(font.get_char_index(ord(str(d)))) for d in range(10)]
        if all(name.startswith(digit) for name, digit in zip(names, DIGIT_NAMES, strict=True)):
            fonts.append(path)
    return fonts


def renderer() -> str:
    """What draws the glyphs: another matplotlib may ship other fonts or another FreeType."""
    import matplotlib
    from matplotlib import ft2font

    return f"matplotlib {matplotlib.__version__}, freetype {ft2font.__freetype_version__}"


def render_digits(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of each digit: uint8 (10 * per_class, 8, 8) in 0..16 and int64
    labels, class by class. Each class cycles through the fonts, so every font is used
    about equally; everything else is drawn from `seed`."""
    from matplotlib.ft2font import FT2Font

    fonts = [FT2Font(str(path)) for path in digit_fonts()]
    count = 10 * per_class
    rng = np.random.default_rng(seed)
    sizes = rng.choice(FONT_SIZES, count)
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, count)
    fill = rng.uniform(0.85, 1.0, count)  # the glyph's height as a share of the bitmap's
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, (count, 2))
    blur = rng.uniform(0.0, 1.0, count)  # Gaussian sigma on the 32x32 grey image
    threshold = rng.uniform(0.25, 0.6, count)  # lower: more pixels on, thicker strokes
    thicken = rng.random(count) < 0.3  # one more pixel of stroke all round
    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)
    images = np.empty((count, BITMAP // BLOCK, BITMAP // BLOCK), dtype=np.uint8)
    for i, digit in enumerate(labels):
        font = fonts[(i % per_class) % len(fonts)]
        grey = _glyph(font, str(digit), int(sizes[i]), float(angles[i]))
        grey = _size_normalised(grey, float(fill[i]), shifts[i])
        bitmap = ndimage.gaussian_filter(grey, float(blur[i])) > threshold[i]
        if thicken[i]:
            bitmap = ndimage.binary_dilation(bitmap)
        images[i] = _block_counts(bitmap)
    return images, labels


def _glyph(font: Any, char: str, size: int, angle: float) -> np.ndarray:
    """The rotated glyph as grey levels in [0, 1], cropped to its ink."""
    font.set_size(size, 72)  # 72 dpi: `size` is in pixels
    font.set_text(char, angle=angle)
    font.draw_glyphs_to_bitmap(antialiased=True)
    grey = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.nonzero(grey)
    return grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _size_normalised(grey: np.ndarray, fill: float, shift: np.ndarray) -> np.ndarray:
    """The glyph scaled (aspect kept) so its height spans `fill` of the 32x32 bitmap (its
    width at most all of it), centred and moved by `shift` px: optdigits' bitmaps were
    size-normalised so that nearly every digit spans the full height."""
    from PIL import Image

    scale = min(fill * BITMAP / grey.shape[0], BITMAP / grey.shape[1])
    height, width = (max(1, round(side * scale)) for side in grey.shape)
    small = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR))
    canvas = np.zeros((BITMAP, BITMAP), dtype=np.float32)
    top = int(np.clip((BITMAP - height) // 2 + shift[0], 0, BITMAP - height))
    left = int(np.clip((BITMAP - width) // 2 + shift[1], 0, BITMAP - width))
    canvas[top : top + height, left : left + width] = small
    return canvas


def _block_counts(bitmap: np.ndarray) -> np.ndarray:
    """On pixels in each non-overlapping 4x4 block: (32, 32) bool -> (8, 8) in 0..16."""
    side = BITMAP // BLOCK
    return bitmap.reshape(side, BLOCK, side, BLOCK).sum(axis=(1, 3)).astype(np.uint8)


class PrintedDigits:
    """Digits 0-9 printed in matplotlib's fonts, in sklearn's 8x8 / 0..16 format: a labelled
    source domain for the handwritten `digits` (offline, seeded, cached on disk).

    `renders` counts the images this object generated rather than read from the cache.
    """

    def __init__(self, per_class: int = 200, seed: int = 0, cache_dir: str | None = None):
        self.check_options(per_class=per_class, seed=seed, cache_dir=cache_dir)
        self.per_class, self.seed = per_class, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE
        self.renders = 0

    @staticmethod
    def check_options(per_class: int, seed: int, cache_dir: str | None) -> None:
        whole_number("per_class", per_class, 1)
        whole_number("seed", seed, 0)
        if cache_dir is not None and not isinstance(cache_dir, str):
            raise OptionError("cache_dir", cache_dir, "must be a folder path, or null")

    def identity(self) -> dict[str, Any]:
        """The options and what made the images; not the cache folder, which holds them."""
        return {
            "name": "printed_digits",
            "per_class": self.per_class,
            "seed": self.seed,
            "generator": GENERATOR_VERSION,
            "renderer": renderer(),
        }

    def cache_path(self) -> Path:
        return self.cache_dir / f"{json_digest(self.identity())}.npz"

    def load(self, preprocessing: Preprocessing) -> DatasetParts:
        images, labels = self.images()
        return sixteen_level_parts(images, labels, [str(d) for d in range(10)], preprocessing)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, 8, 8) uint8 in 0..16 and (N,) int64 labels: from the cache when an entry for
        these options is there and fits, generated (and stored) otherwise."""
        path = self.cache_path()
        if path.is_file():
            cached = self._read(path)
            if cached is not None:
                return cached
        images, labels = render_digits(self.per_class, self.seed)
        self.renders += len(labels)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, lambda f: np.savez(f, images=images, labels=labels))
        return images, labels

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """The entry's arrays, or None (entry deleted, one warning) when it is unusable."""
        stored: dict[str, np.ndarray] = {}
        try:
            with path.open("rb") as file:  # ours to close: np.load leaks it on a bad zip
                entry = np.load(file, allow_pickle=False)
                if isinstance(entry, np.lib.npyio.NpzFile):
                    stored = {key: entry[key] for key in entry.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            problem = f"cannot be read ({type(err).__name__}: {err})"
        else:
            problem = self._entry_problem(stored)
        if problem is None:
            return stored["images"], stored["labels"]
        warnings.warn(f"printed digits cache entry {path} {problem}; regenerating it", stacklevel=3)
        path.unlink(missing_ok=True)
        return None

    def _entry_problem(self, stored: dict[str, np.ndarray]) -> str | None:
        """What makes a read entry unfit for these options; None: nothing."""
        if set(stored) != {"images", "labels"}:
            return "does not hold exactly images and labels"
        images, labels = stored["images"], stored["labels"]
        count, side = 10 * self.per_class, BITMAP // BLOCK
        if images.dtype != np.uint8 or images.shape != (count, side, side):
            return f"holds images {images.dtype} {images.shape}, not uint8 {(count, side, side)}"
        if images.max(initial=0) > BLOCK * BLOCK:
            return f"holds pixel values up to {images.max()}, not 0..{BLOCK * BLOCK}"
        expected = np.repeat(np.arange(10, dtype=np.int64), self.per_class)
        if labels.dtype != np.int64 or not np.array_equal(labels, expected):
            return f"holds labels other than {self.per_class} of each digit 0-9 in order"
        return None
