"""The shape every component (head, freeze strategy, regulariser, backbone, ...) shares.

A component is the `_target_` of its group's node: a class or function whose keyword
arguments, typed and with defaults, are its options. It may have `check_options(**options)`
(a staticmethod, or an attribute of a function) that raises OptionError for a bad value; a
class calls it in `__init__` too, so each check lives in one place. Validation calls it with
the node's values over the signature's defaults, before any run, and names the group.

Light on purpose (no torch): the first validation pass and reports import it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from transferlab.errors import UserError, instantiate, one_of


class OptionError(UserError):
    """A bad option value, named without its group (`dropout=1.0 must be in [0, 1)`): the
    component does not know which group chose it; validation adds it (`options_of`)."""

    def __init__(self, option: str, value: Any, requirement: str):
        super().__init__(f"{option}={value!r} {requirement}")
        self.option, self.value, self.requirement = option, value, requirement

    def under(self, group: str) -> UserError:
        return UserError(f"{group}.{self.option}={self.value!r} {self.requirement}")


@contextmanager
def options_of(group: str) -> Iterator[None]:
    """An OptionError raised inside reaches the user as `group.option=value requirement`."""
    try:
        yield
    except OptionError as error:
        raise error.under(group) from None


def build(node: Mapping[str, Any], group: str, **filled: Any) -> Any:
    """The group's `_target_` called with the node's options and the arguments the code
    fills in (`filled`); None for `_target_: null` (e.g. regularizer=none)."""
    if node.get("_target_") is None:
        return None
    with options_of(group):
        return instantiate(node, **filled)


def is_number(value: Any, whole: bool = False) -> bool:
    """A bool is an int to Python, never a number to a user."""
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def whole_number(
    option: str, value: Any, low: int, high: int | None = None, optional: bool = False
) -> None:
    """Counts, sizes and seeds: a whole number in [low, high] (or None where optional)."""
    if value is None and optional:
        return
    if not is_number(value, whole=True) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        or_null = ", or null" if optional else ""
        raise OptionError(option, value, f"must be a whole number {bound}{or_null}")


def number(
    option: str,
    value: Any,
    low: float = 0,
    strict: bool = False,
    high: float | None = None,
    whole: bool = False,
) -> None:
    """A number >= low (> low when `strict`) and <= high."""
    if not is_number(value, whole):
        raise OptionError(option, value, f"must be a {'whole number' if whole else 'number'}")
    if value < low or (value == low and strict):
        raise OptionError(option, value, f"must be {'>' if strict else '>='} {low}")
    if high is not None and value > high:
        raise OptionError(option, value, f"must be <= {high}")


def fraction(option: str, value: Any) -> None:
    """A rate or a share: in [0, 1)."""
    if not is_number(value) or not 0 <= value < 1:
        raise OptionError(option, value, "must be in [0, 1)")


def choice(option: str, value: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise OptionError(option, value, f"is unknown; use {one_of(choices)}")


def locate(path: str, group: str) -> Any:
    """The object a dotted `_target_` names, as Hydra finds it (a module, then attributes)."""
    parts = str(path).split(".")
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue  # not a module: perhaps a class, one dot further up
            raise UserError(f"{group}._target_={path!r} cannot be imported: {err}") from None
        try:
            return functools.reduce(getattr, parts[split:], module)
        except AttributeError as err:
            raise UserError(f"{group}._target_={path!r} cannot be found: {err}") from None
    raise UserError(f"{group}._target_={path!r} names no importable module")


class ClassicalHead:
    """A head fitted by scikit-learn on the frozen backbone's features (`head._target_`):
    the run fits `estimator()` on the training features and scores it like a neural head.
    A user's own classical head subclasses it; its options are its `__init__` keywords.
    Defined here, not with the built-in ones, so that telling the kinds of head apart
    imports no scikit-learn."""

    def estimator(self):
        """A new unfitted estimator (anything with fit / predict, ideally standardised)."""
        raise NotImplementedError


def is_classical_head(head: Mapping[str, Any]) -> bool:
    """The head is fitted by scikit-learn on frozen features, not trained by Lightning: its
    target is a ClassicalHead subclass (imports the target's module)."""
    path = head.get("_target_")
    target = locate(path, "head") if path else None
    return isinstance(target, type) and issubclass(target, ClassicalHead)


def target_name(node: Mapping[str, Any]) -> str | None:
    """The short name of a node's `_target_` (its class or function name), None without."""
    path = node.get("_target_")
    return str(path).rpartition(".")[2] if path else None
