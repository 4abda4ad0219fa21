"""Hydra's sweep grammar as an Optuna search space.

`interval(a,b)` -> float, `int(interval(a,b))` -> int, `tag(log, ...)` -> log scale,
`range(a,b,step)` -> stepped int/float (stop excluded, as in Hydra), `choice(...)`, `a,b`
and `glob(...)` -> categorical. Every other override is passed unchanged to every trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from transferlab.compat import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    OverridesParser,
    Transformer,
    overrides_parser,
)
from transferlab.errors import UserError

INTERVAL_TAGS = {"log"}


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, BaseDistribution]  # param name -> distribution
    keys: dict[str, str]  # param name -> its override key, with any +/++ prefix
    fixed: list[str]  # overrides every trial gets as typed
    choice_texts: dict[str, dict[Any, str]]  # categorical param -> choice -> override text

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's job overrides: the fixed ones, then its sampled values."""
        return [*self.fixed, *self.describe(params)]

    def describe(self, params: dict[str, Any]) -> list[str]:
        return [f"{self.keys[name]}={self.text(name, v)}" for name, v in params.items()]

    def text(self, name: str, value: Any) -> str:
        """A sampled value as override text: a choice exactly as it was written."""
        texts = self.choice_texts.get(name)
        return texts[value] if texts is not None else repr(value)


def parse_search_space(
    overrides: Sequence[str], parser: OverridesParser | None = None
) -> SearchSpace:
    """A later override of a key replaces an earlier one (the command line, after the
    sweeper's `params`, wins)."""
    parser = parser or overrides_parser()
    latest: dict[str, Override] = {}
    for override in parser.parse_overrides(list(overrides)):
        latest[_param_name(override)] = override
    sweeps = {name: o for name, o in latest.items() if o.is_sweep_override()}
    choices = {name: o for name, o in sweeps.items() if o.is_choice_sweep()}
    return SearchSpace(
        distributions={name: distribution(o) for name, o in sweeps.items()},
        keys={name: o.get_key_element() for name, o in sweeps.items()},
        fixed=[o.input_line for o in latest.values() if not o.is_sweep_override()],
        choice_texts={
            name: {_choice(x): Transformer.str(x) for x in _elements(o)}
            for name, o in choices.items()
        },
    )


def distribution(override: Override) -> BaseDistribution:
    try:
        if override.is_interval_sweep():
            return _interval(override.value())
        if override.is_range_sweep():
            return _range(list(override.sweep_iterator()), override.value().step)
        return CategoricalDistribution([_choice(x) for x in _elements(override)])
    except ValueError as error:
        raise UserError(f"{override.input_line}: {error}") from None


def grid(space: SearchSpace) -> dict[str, list[Any]]:
    """Every value of each param, for the grid sampler (which needs a discrete space)."""
    return {name: _grid_values(name, d) for name, d in space.distributions.items()}


def _grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        count = round((dist.high - dist.low) / dist.step) + 1
        # rounded: 0.1 + 2 * 0.1 would be a grid point of its own, 0.30000000000000004
        return [round(dist.low + i * dist.step, 12) for i in range(count)]
    raise UserError(
        f"hydra.sweeper.sampler=grid needs discrete values, but {name} is continuous; "
        "use choice(...), a,b,c or range(start,stop,step)"
    )


def _interval(sweep: IntervalSweep) -> BaseDistribution:
    unknown = sweep.tags - INTERVAL_TAGS
    if unknown:
        raise ValueError(f"unknown tag {', '.join(sorted(unknown))}; use tag(log, interval(a,b))")
    is_int = isinstance(sweep.start, int) and isinstance(sweep.end, int)
    kind = IntDistribution if is_int else FloatDistribution
    return kind(sweep.start, sweep.end, log="log" in sweep.tags)


def _range(values: list[int | float], step: int | float) -> BaseDistribution:
    if not values:
        raise ValueError("the range is empty")
    if all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values), step=abs(int(step)))
    return FloatDistribution(min(values), max(values), step=abs(float(step)))


def _choice(value: Any) -> Any:
    """Optuna keeps strings, numbers and bools as they are, lists and dicts as their text."""
    return value if isinstance(value, (str, bool, int, float)) else Transformer.str(value)


def _elements(override: Override) -> list[Any]:
    """A choice's values in the order written (`shuffle` is moot for a search space, and a
    resumed study needs the same categorical distribution)."""
    value = override.value()
    return list(value.list) if isinstance(value, ChoiceSweep) else list(override.sweep_iterator())


def _param_name(override: Override) -> str:
    key = override.key_or_group
    return f"{key}@{override.package}" if override.package is not None else key
