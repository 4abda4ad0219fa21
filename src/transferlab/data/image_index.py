"""The index of an image folder: every image file under its class folders, once.

Built with our own walk rather than torchvision's ImageFolder scan so that a symlink never
leads out of the root or round a loop, a file reached twice is counted once (no image in two
splits), and unreadable files are found when the dataset is set up, by their header alone.
The same index gives the folder's manifest digest: what the run saw, and what keys the
feature cache.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from PIL import Image

from transferlab.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageFile:
    """One indexed image: where it is listed under the root, and the file it is."""

    part: str  # "train", "val" or "test"; a root without split folders is all "train"
    folder: str  # its class folder, relative to the root ("cat", or "train/cat")
    relative: str  # its own path relative to the root, as listed
    real: str  # the file, symlinks resolved
    size: int
    mtime_ns: int
    readable: bool  # its header is that of an image PIL can open


@dataclass(frozen=True)
class FolderIndex:
    class_folders: dict[str, list[str]]  # part -> its class folders (relative), sorted
    files: list[ImageFile]  # every image file once, in listing order

    @property
    def digest(self) -> str:
        """sha256 of each file's relative path, size and mtime (ns): cheap to recompute,
        and changed by any edit, move, addition or removal of an image."""
        manifest = hashlib.sha256()
        for f in self.files:
            manifest.update(f"{f.relative}\0{f.size}\0{f.mtime_ns}\n".encode())
        return f"sha256:{manifest.hexdigest()}"


def index_images(root: Path, parts: dict[str, Path]) -> FolderIndex:
    """Every image file under the class folders of each part folder, once.

    Folders are listed without following symlinks (so a link loop is never entered); a
    symlinked file is taken only when its target lies inside `root`; a file reached twice
    (hard link, symlink, across splits) is taken where it is first listed (train, then
    val, then test). What is left out is named in one warning. `root` must be resolved.
    """
    listing = _Listing(root)
    class_folders = {part: listing.class_folders(folder) for part, folder in parts.items()}
    files = [
        image
        for part, folders in class_folders.items()
        for folder in folders
        for image in listing.images(part, folder)
    ]
    listing.warn()
    return FolderIndex(class_folders, files)


class _Listing:
    """One walk over a root: the images found, and what was left out and why."""

    def __init__(self, root: Path):
        self.root = root
        self.seen: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every file taken
        self.not_followed: list[str] = []
        self.duplicates: list[str] = []

    def relative(self, path: str | Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def class_folders(self, folder: Path) -> list[str]:
        """The visible subfolders of `folder`, sorted by name, relative to the root."""
        try:
            entries = sorted(
                (e for e in os.scandir(folder) if not e.name.startswith(".")),
                key=lambda e: e.name,
            )
        except OSError as err:
            _refuse_unlistable(err)
        self.not_followed += [self.relative(e) for e in entries if e.is_symlink() and e.is_dir()]
        return [self.relative(e) for e in entries if e.is_dir(follow_symlinks=False)]

    def images(self, part: str, folder: str) -> Iterator[ImageFile]:
        """The image files under a class folder, in a fixed order."""
        for current, dirs, names in os.walk(self.root / folder, onerror=_refuse_unlistable):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            linked = [Path(current, d) for d in dirs if Path(current, d).is_symlink()]
            self.not_followed += [self.relative(path) for path in linked]
            for name in sorted(names):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                image = self._image(part, folder, Path(current, name))
                if image is not None:
                    yield image

    def _image(self, part: str, folder: str, path: Path) -> ImageFile | None:
        """None for a file out of the root or taken before (each noted for the warning);
        a link that cannot be resolved (dangling, a loop) is an unreadable image."""
        listed = ImageFile(part, folder, self.relative(path), str(path), -1, -1, readable=False)
        try:
            real = Path(os.path.realpath(path, strict=True))
            stat = real.stat()
        except OSError:
            return listed
        if not real.is_relative_to(self.root):
            self.not_followed.append(listed.relative)
            return None
        if (stat.st_dev, stat.st_ino) in self.seen:
            self.duplicates.append(listed.relative)
            return None
        self.seen.add((stat.st_dev, stat.st_ino))
        return replace(
            listed,
            real=str(real),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            readable=_has_image_header(real),
        )

    def warn(self) -> None:
        """One warning per kind of file left out, naming the first few."""
        where = f"dataset.root={self.root}"
        if self.not_followed:
            warnings.warn(
                f"{where}: {len(self.not_followed)} symlink(s) not followed (to a folder, or "
                f"out of the root): {first_few(self.not_followed)}",
                stacklevel=2,
            )
        if self.duplicates:
            warnings.warn(
                f"{where}: {len(self.duplicates)} file(s) are a file listed before (a hard "
                f"link or symlink), counted once: {first_few(self.duplicates)}",
                stacklevel=2,
            )


def _has_image_header(path: Path) -> bool:
    """Whether PIL recognises the file: `Image.open` reads the header only (the pixels are
    decoded on first use), so a folder of 10k images is checked in seconds."""
    try:
        with Image.open(path):
            return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _refuse_unlistable(err: OSError) -> NoReturn:
    """A folder that cannot be listed would silently drop its images."""
    raise UserError(
        f"dataset.root: cannot list {err.filename} ({err.strerror}); check its permissions"
    ) from err


def first_few(names: list[str], shown: int = 5) -> str:
    """Up to `shown` names, then how many more: one line however many there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
