"""The printed-digits source domain: seeded, in sklearn's digits format, cached and checked
on disk, related to the handwritten digits but clearly shifted from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.artifacts import download_artifacts
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from transferlab.components import OptionError
from transferlab.config import validate
from transferlab.data.datasets import Digits
from transferlab.data.printed_digits import PrintedDigits, digit_fonts
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

NATIVE = Preprocessing(input_size=None)


def test_fonts_are_matplotlibs_own_and_draw_digits():
    names = {path.name for path in digit_fonts()}
    assert {"DejaVuSans.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "cmr10.ttf"} <= names
    assert not names & {"cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf"}  # symbols
    assert len(names) == 22


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    first = PrintedDigits(per_class=20, seed=3, cache_dir=str(tmp_path / "a")).images()
    again = PrintedDigits(per_class=20, seed=3, cache_dir=str(tmp_path / "b")).images()
    other = PrintedDigits(per_class=20, seed=4, cache_dir=str(tmp_path / "c")).images()
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert np.array_equal(first[1], other[1])  # the same labels...
    assert (first[0] != other[0]).any(axis=(1, 2)).mean() > 0.9  # ...on other images


def test_format_and_classes_match_sklearns_digits(tmp_path):
    images, labels = PrintedDigits(per_class=30, cache_dir=str(tmp_path)).images()
    assert images.shape == (300, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16  # on pixels of 4x4 blocks: 0..16
    assert np.bincount(labels).tolist() == [30] * 10
    printed = PrintedDigits(per_class=30, cache_dir=str(tmp_path)).load(NATIVE)
    handwritten = Digits().load(NATIVE)
    assert printed.class_names == handwritten.class_names == [str(d) for d in range(10)]
    image, _ = printed.parts["train"].dataset[0]
    assert image.shape == handwritten.parts["train"].dataset[0][0].shape == (3, 8, 8)
    assert np.bincount(printed.parts["train"].targets).tolist() == [30] * 10
    ink = images.reshape(len(images), -1).mean(1)  # every image holds a digit
    assert ink.min() > 1.0


def test_the_cache_is_read_back_and_a_damaged_entry_is_regenerated(tmp_path):
    first = PrintedDigits(per_class=10, cache_dir=str(tmp_path))
    made = first.images()
    assert first.renders == 100 and first.cache_path().is_file()
    second = PrintedDigits(per_class=10, cache_dir=str(tmp_path))
    read = second.images()
    assert second.renders == 0  # read, not generated
    assert np.array_equal(read[0], made[0]) and np.array_equal(read[1], made[1])

    path = first.cache_path()
    path.write_bytes(path.read_bytes()[:200])  # cut short
    third = PrintedDigits(per_class=10, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="cannot be read.*regenerating it") as caught:
        regenerated = third.images()
    assert len(caught) == 1 and third.renders == 100
    assert np.array_equal(regenerated[0], made[0])

    np.savez(path, images=made[0] * 2, labels=made[1])  # pixel values out of range
    with pytest.warns(UserWarning, match="pixel values up to 32, not 0..16"):
        PrintedDigits(per_class=10, cache_dir=str(tmp_path)).images()
    np.savez(path, images=made[0][:50], labels=made[1][:50])  # another size's entry
    with pytest.warns(UserWarning, match=r"uint8 \(50, 8, 8\), not uint8 \(100, 8, 8\)"):
        PrintedDigits(per_class=10, cache_dir=str(tmp_path)).images()


def test_the_cache_key_follows_the_options_not_the_folder(tmp_path):
    base = PrintedDigits(per_class=10, seed=0, cache_dir=str(tmp_path))
    assert base.cache_path().name == PrintedDigits(per_class=10, cache_dir="x").cache_path().name
    assert base.cache_path() != PrintedDigits(per_class=11, cache_dir=str(tmp_path)).cache_path()
    assert (
        base.cache_path()
        != PrintedDigits(per_class=10, seed=1, cache_dir=str(tmp_path)).cache_path()
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"per_class": 0}, "per_class=0 must be a whole number >= 1"),
        ({"seed": -1}, "seed=-1 must be a whole number >= 0"),
        ({"cache_dir": 3}, "cache_dir=3 must be a folder path, or null"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(OptionError, match=f"^{message}$"):
        PrintedDigits(**options)


def test_printed_digits_teach_handwritten_ones_partly(tmp_path):
    """A related domain (well above chance on handwritten digits) with a real shift (well
    below a model trained on handwritten digits)."""
    images, labels = PrintedDigits(per_class=100, cache_dir=str(tmp_path)).images()
    digits = load_digits()
    handwritten = digits.images.reshape(len(digits.images), -1) / 16
    model = LogisticRegression(C=0.1, max_iter=1000)  # C=0.1: converges in a fraction of a second
    printed = model.fit(images.reshape(len(images), -1) / 16, labels)
    across = printed.score(handwritten, digits.target)
    train_x, test_x, train_y, test_y = train_test_split(
        handwritten, digits.target, test_size=0.5, random_state=0, stratify=digits.target
    )
    within = model.fit(train_x, train_y).score(test_x, test_y)
    print(f"printed -> handwritten {across:.3f}, handwritten -> handwritten {within:.3f}")
    assert 0.5 <= across <= within - 0.2


def test_a_run_trains_on_printed_digits(train, runs, tracking_uri, tmp_path):
    cache = tmp_path / "printed"
    train("dataset=printed_digits", "dataset.per_class=10", f"dataset.cache_dir={cache}",
          "trainer.max_epochs=1")  # fmt: skip
    (run,) = runs()
    assert run.info.status == "FINISHED" and run.data.params["dataset"] == "printed_digits"
    assert 0 <= run.data.metrics["test/acc"] <= 1
    reloaded = PrintedDigits(per_class=10, cache_dir=str(cache))
    reloaded.images()
    assert reloaded.renders == 0  # the run generated and stored exactly these images
    report = download_artifacts(
        run_id=run.info.run_id, artifact_path="test/per_class_report.txt", tracking_uri=tracking_uri
    )
    rows = [line.split() for line in Path(report).read_text().splitlines()]
    support = {row[0]: int(row[-1]) for row in rows if row and row[0] in "0123456789"}
    assert support == {str(d): 2 for d in range(10)}  # test_fraction 0.2 of 10 per class


def test_validation_names_the_group_of_a_bad_option(make_config):
    with pytest.raises(UserError, match=r"^dataset\.per_class=0 must be a whole number >= 1$"):
        validate(make_config("dataset=printed_digits", "dataset.per_class=0"))
