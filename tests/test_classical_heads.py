"""Classical heads: scikit-learn classifiers on a frozen backbone's features of real digits."""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import hinge_loss, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from transferlab.components import OptionError
from transferlab.data.datasets import Digits
from transferlab.data.feature_cache import extract_features
from transferlab.data.splits import TaskSpec, carve_task
from transferlab.errors import UserError
from transferlab.models.backbones import build_backbone
from transferlab.models.classical_heads import (
    LogisticRegressionHead,
    SVMHead,
    evaluate,
    load,
    save,
)

Features = tuple[torch.Tensor, torch.Tensor]
HEADS = {
    "svm-linear": SVMHead(kernel="linear"),
    "svm-rbf": SVMHead(kernel="rbf", C=2.0),
    "logreg": LogisticRegressionHead(),
}


@pytest.fixture(scope="module")
def features() -> dict[str, Features]:
    """A randomly initialised small CNN's frozen features: 30 labelled digits per class."""
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn")
    splits = carve_task(
        Digits().load(backbone.preprocessing), TaskSpec(train_per_class=30, split_seed=0)
    )
    return {
        name: extract_features(backbone, getattr(splits, name).dataset, batch_size=256)
        for name in ("train", "test")
    }


@pytest.fixture(scope="module")
def fitted(features) -> dict[str, object]:
    return {name: head.estimator().fit(*features["train"]) for name, head in HEADS.items()}


# Measured on this data: svm-linear 0.889, svm-rbf 0.936, logreg 0.925 test accuracy.
@pytest.mark.parametrize(
    ("head", "min_acc"), [("svm-linear", 0.84), ("svm-rbf", 0.89), ("logreg", 0.88)]
)
def test_heads_learn_digits_from_300_examples(fitted, features, head, min_acc):
    scores = evaluate(fitted[head], *features["test"], num_classes=10)
    assert scores["acc"] > min_acc
    assert np.isfinite(scores["loss"]) and scores["loss"] > 0


def test_svm_loss_is_the_hinge_loss_and_logreg_loss_the_log_loss(fitted, features):
    x, y = features["test"]
    svm, logreg = fitted["svm-rbf"], fitted["logreg"]
    assert not hasattr(svm, "predict_proba")
    labels = list(range(10))
    expected_hinge = hinge_loss(y.numpy(), svm.decision_function(x.numpy()), labels=labels)
    assert evaluate(svm, x, y, 10)["loss"] == pytest.approx(expected_hinge)
    expected_log = log_loss(y.numpy(), logreg.predict_proba(x.numpy()), labels=labels)
    assert evaluate(logreg, x, y, 10)["loss"] == pytest.approx(expected_log)


def test_two_classes_are_scored_too(features):
    x, y = features["train"]
    binary = y < 2
    for classical in HEADS.values():
        head = classical.estimator().fit(x[binary], y[binary])
        scores = evaluate(head, x[binary], y[binary], num_classes=2)
        assert scores["acc"] > 0.9 and np.isfinite(scores["loss"])


@pytest.mark.parametrize("head", HEADS)
def test_saved_head_loads_with_the_same_predictions(tmp_path, fitted, features, head):
    path = save(fitted[head], tmp_path / "head")
    assert path == tmp_path / "head.skops"
    x = features["test"][0].numpy()
    np.testing.assert_array_equal(load(path).predict(x), fitted[head].predict(x))


class PicklePayload:
    """What a planted model file would hold: unpickling it runs `os.mkdir(marker)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["head.joblib", "head.skops"])
def test_a_pickle_is_never_loaded_whatever_its_name(tmp_path, name):
    marker = tmp_path / "payload-ran"
    planted = tmp_path / name
    joblib.dump(PicklePayload(marker), planted)
    with pytest.raises(UserError, match=rf"^{planted}: .*not loading it") as error:
        load(planted)
    assert "joblib" in str(error.value) or "not a skops file" in str(error.value)
    assert not marker.exists()
    joblib.load(planted)  # the file is a live payload: unpickled, it runs
    assert marker.is_dir()


def _double(x):
    return 2 * x


def test_a_file_with_untrusted_code_is_not_loaded(tmp_path, features):
    x, y = features["train"]
    model = make_pipeline(FunctionTransformer(_double), LogisticRegression()).fit(x, y)
    path = save(model, tmp_path / "model")
    with pytest.raises(UserError, match=r"Untrusted types.*_double"):
        load(path)


@pytest.mark.parametrize(
    ("head", "options", "message"),
    [
        (SVMHead, {"kernel": "cubic"}, r"kernel='cubic' is unknown; use linear, rbf, poly"),
        (SVMHead, {"C": 0}, r"C=0 must be > 0"),
        (LogisticRegressionHead, {"max_iter": -1}, r"max_iter=-1 must be a whole number >= 1"),
    ],
)
def test_bad_head_settings_name_the_value_and_the_accepted_ones(head, options, message):
    with pytest.raises(OptionError, match=message) as error:
        head(**options)
    assert str(error.value.under("head")).startswith(f"head.{message.split('=')[0]}=")
