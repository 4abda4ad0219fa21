"""User-facing errors: one clear line, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import CompactHydraException

from transferlab.scrub import scrubbed


class UserError(CompactHydraException):
    """Bad input from the user: a config value, a path, a weights file.

    Hydra prints a CompactHydraException as its message alone, without a traceback, so
    the message must name the bad value and what would be accepted.
    """


@contextmanager
def exits_on_user_error() -> Iterator[None]:
    """What every command-line entry point does with a UserError: its one line on stderr
    (without the secrets this process was given: transferlab.scrub), exit status 1, no
    traceback."""
    try:
        yield
    except UserError as error:
        print(f"error: {scrubbed(str(error))}", file=sys.stderr)
        raise SystemExit(1) from None


def one_of(values) -> str:
    """Formats accepted values for an error message: 'a, b or c'."""
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def instantiate(node, **kwargs):
    """hydra.utils.instantiate, but a UserError raised by the target reaches the user as
    itself: Hydra wraps every error in a message about the call."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


class RunStopped(Exception):
    """Ends a run early on purpose (e.g. an Optuna trial pruned): not a failure.

    The MLflow run ends with `status` and `tags` instead of FAILED.
    """

    status = "KILLED"
    tags: dict[str, str] = {}  # noqa: RUF012 - class-level defaults, overridden per subclass


class TrainingDiverged(UserError):
    """The training loss became NaN or inf: every later step would train on garbage."""

    @classmethod
    def at(cls, value: float, step: int, epoch: int) -> TrainingDiverged:
        return cls(
            f"the training loss is {value} at global step {step} (epoch {epoch}); try a lower "
            "optimizer.lr, gradient clipping (trainer.gradient_clip_val=1.0) or full "
            "precision (trainer.precision=32-true)"
        )
