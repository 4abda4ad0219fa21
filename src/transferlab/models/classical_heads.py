"""Classical heads: scikit-learn classifiers on a frozen backbone's features
("CNN features + SVM").

Every head standardises the features first (a StandardScaler in a Pipeline, fitted on the
training features only). Backbone features come on uneven scales: post-ReLU activations,
some dimensions near zero and others large. An SVM's margin and RBF distances and the L2
penalty of logistic regression treat all dimensions alike, so unscaled, a few large
dimensions dominate, the best `C` moves with the backbone, and the solvers converge slowly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import skops.io as sio
from numpy.typing import ArrayLike
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, hinge_loss, log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from skops.io.exceptions import UntrustedTypesFoundException

from transferlab.components import ClassicalHead, choice, number, whole_number
from transferlab.errors import UserError

SVM_KERNELS = ("linear", "rbf", "poly", "sigmoid")


class SVMHead(ClassicalHead):
    """linear: LinearSVC (liblinear, one-vs-rest: fast on many examples); other kernels: SVC.

    No probabilities: SVC's Platt scaling costs an internal 5-fold fit and can disagree
    with `predict`; `evaluate` uses the hinge loss instead.
    """

    def __init__(self, kernel: str = "linear", C: float = 1.0):
        self.check_options(kernel=kernel, C=C)
        self.kernel, self.C = kernel, C

    @staticmethod
    def check_options(kernel: str, C: float) -> None:
        choice("kernel", kernel, SVM_KERNELS)
        number("C", C, strict=True)

    def estimator(self) -> Pipeline:
        if self.kernel == "linear":  # random_state: liblinear's dual solver shuffles
            return _standardised(LinearSVC(C=self.C, random_state=0))
        return _standardised(SVC(kernel=self.kernel, C=self.C))


class LogisticRegressionHead(ClassicalHead):
    """Multinomial logistic regression; lbfgs often needs more than sklearn's default 100
    iterations on a few hundred feature dimensions."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.check_options(C=C, max_iter=max_iter)
        self.C, self.max_iter = C, max_iter

    @staticmethod
    def check_options(C: float, max_iter: int) -> None:
        number("C", C, strict=True)
        whole_number("max_iter", max_iter, 1)

    def estimator(self) -> Pipeline:
        return _standardised(LogisticRegression(C=self.C, max_iter=self.max_iter))


def _standardised(classifier: ClassifierMixin) -> Pipeline:
    return make_pipeline(StandardScaler(), classifier)


def evaluate(
    estimator: Pipeline, features: ArrayLike, labels: ArrayLike, num_classes: int
) -> dict[str, float]:
    """`acc` and `loss`, logged as train/, val/ and test/ metrics like a neural head's.

    With `predict_proba` (logreg) the loss is the log loss, a neural head's cross-entropy.
    The SVMs have no probabilities, so theirs is the multiclass hinge loss of the decision
    function (sklearn's `hinge_loss`): a loss-equivalent under the same metric names, on
    another scale, so compare losses only between runs of the same head. Classes are
    `range(num_classes)`, so a split that lacks some of them is still scored against all.
    """
    x, y = np.asarray(features), np.asarray(labels)
    classes = list(range(num_classes))
    if hasattr(estimator, "predict_proba"):
        loss = log_loss(y, estimator.predict_proba(x), labels=classes)
    else:
        loss = hinge_loss(y, estimator.decision_function(x), labels=classes)
    return {"acc": float(accuracy_score(y, estimator.predict(x))), "loss": float(loss)}


def save(estimator: Pipeline, path: Path) -> Path:
    """Writes the fitted estimator for an MLflow artifact; returns the file written: skops
    format (`path` with suffix .skops), which loads without running pickle code."""
    target = Path(path).with_suffix(".skops")
    sio.dump(estimator, target)
    return target


def load(path: Path) -> Pipeline:
    """Reads a file written by `save`. Nothing is unpickled: only a skops file is read, and
    one that holds types skops does not trust by default (sklearn and numpy types are
    trusted) is refused unread; a .joblib or any other file (a pickle could run code while
    loading) is refused without being opened."""
    path = Path(path)
    if path.suffix != ".skops":
        raise UserError(
            f"{path}: only .skops files are loaded, not {path.suffix or 'a file without suffix'} "
            "(a joblib or pickle file runs code while loading); not loading it"
        )
    try:
        return sio.load(path)
    except UntrustedTypesFoundException as err:
        raise UserError(f"{path}: {err} Not loading it.") from err
    except zipfile.BadZipFile as err:
        raise UserError(f"{path}: not a skops file ({err}); not loading it") from err
