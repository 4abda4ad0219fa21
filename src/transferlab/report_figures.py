"""What a study's figure shows, as numbers: its runs grouped by what varies but the seed,
each group as mean ± std over its seeds, the baseline beside the method.

A study declares its figure with `report.*` (conf/train.yaml; logged with every run, so the
report reads the declaration back from the runs): a curve (the metric against a swept
number, a line per setting) or bars (a bar per setting, best first, beside its cost).
No matplotlib here (report_plots draws): the tests check these numbers against their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from transferlab.errors import UserError, one_of
from transferlab.objective import GROUPS, lower_is_better, objective_value, overrides_as_params
from transferlab.report_study import RunRow, Study, mean_std, seed_groups
from transferlab.tracking.sweep import short_keys, short_value

KINDS = ("auto", "curve", "bars")
SCRATCH = "scratch"  # report.compare: the scratch model compare_scratch trains beside each run
NO_COST = "none"
DEFAULT_METRIC = "test/acc"  # the figure's metric where runs logged it: the held-out result
# The bars' cost panel under report.cost=auto: the trainable share where the settings differ
# in it (a PEFT study), else the latency.
COST_METRICS = ("model/params_trainable_pct", "inference/latency_ms_single")
UNITS = {  # axis labels: the unit of a metric, by the end of its name
    "acc": "fraction correct",
    "loss": "cross-entropy",
    "params_trainable_pct": "%",
    "latency_ms_single": "ms per image, batch of 1",
    "latency_ms_batch": "ms per batch",
    "adapter_size_mb": "MB",
}
MAX_VAL_CURVES = 8  # settings drawn per epoch: the best ones (and the baseline)
SWEPT_AT_LEAST = 2  # values a curve's x must take
MISSING = object()


@dataclass(frozen=True)
class FigureSpec:
    """A study's declaration of its figure (`report.*`); None: derived from the runs."""

    kind: str = "auto"
    metric: str | None = None
    x: str | None = None
    x_label: str | None = None
    compare: str | Mapping[str, str] | None = None  # `scratch`, or the baseline's setting
    cost: str = "auto"
    title: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"report.kind={self.kind!r}: use {one_of(KINDS)}")
        if isinstance(self.compare, str) and self.compare != SCRATCH:
            raise UserError(
                f"report.compare={self.compare!r}: use {SCRATCH} (compare_scratch's model), "
                "a setting ({freeze: linear_probe}) or null"
            )
        if isinstance(self.compare, Mapping) and not self.compare:
            raise UserError("report.compare={}: name the baseline's setting, e.g. {freeze: none}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> FigureSpec:
        """From a config's `report` node (a plain mapping); unknown keys are refused."""
        node = dict(node or {})
        unknown = sorted(set(node) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"report.{unknown[0]}: no such key; use {one_of(_fields())}")
        compare = node.get("compare")
        if isinstance(compare, Mapping):
            node["compare"] = {str(k): str(v) for k, v in compare.items()}
        elif compare is not None:
            node["compare"] = str(compare)
        for key in ("kind", "cost"):
            node[key] = str(node.get(key) or getattr(cls, key))
        return cls(**node)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FigureSpec:
        """From a run's params: `report.kind`, `report.compare.freeze`, ... ("None": null)."""
        node: dict[str, Any] = {}
        for key, value in params.items():
            if key.startswith("report.") and value != "None":
                *parents, leaf = key.removeprefix("report.").split(".")
                target = node
                for parent in parents:
                    target = target.setdefault(parent, {})
                target[leaf] = value
        return cls.from_config(node)

    def overridden(self, **values: str | None) -> FigureSpec:
        """The declaration with the report command's own choices (None: kept)."""
        given = {key: value for key, value in values.items() if value is not None}
        if "compare" in given and given["compare"] != SCRATCH:
            given["compare"] = _setting(given["compare"])
        return replace(self, **given)


def _setting(text: str) -> dict[str, str]:
    """`freeze=lora,head=mlp` as {key: value}."""
    pairs = text.split(",")
    if any(not pair.partition("=")[0] or "=" not in pair for pair in pairs):
        raise UserError(f"--compare {text}: use scratch or KEY=VALUE[,KEY=VALUE]")
    return overrides_as_params(pairs)


def _fields() -> list[str]:
    return list(FigureSpec.__dataclass_fields__)


def check_report_config(cfg: Any) -> None:
    """`report.*` before any run: its values, and the keys it names exist in the config."""
    from omegaconf import OmegaConf

    node = cfg.get("report")
    spec = FigureSpec.from_config(OmegaConf.to_container(node) if node is not None else None)
    named = [spec.x] if spec.x else []
    named += list(spec.compare) if isinstance(spec.compare, Mapping) else []
    groups = _config_groups()
    for key in named:
        if key not in groups and OmegaConf.select(cfg, key, default=MISSING) is MISSING:
            raise UserError(f"report names {key!r}, which is no config key or group")


def _config_groups() -> set[str]:
    """The groups a choice can name: every group of the app's config, where Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set(GROUPS)
    return set(GROUPS) | set(HydraConfig.get().runtime.choices)


@dataclass(frozen=True)
class Point:
    """One group of seeds at one x (a number on a curve; a bar's setting)."""

    x: float | str
    values: tuple[float, ...]  # one per seed

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean_std(list(self.values))[0]

    @property
    def std(self) -> float:
        """Sample std over the seeds; 0 for a single seed (drawn without an error bar)."""
        return mean_std(list(self.values))[1] or 0.0


@dataclass(frozen=True)
class Series:
    """A line of a curve, or a bar (one point). `colour_key`: the choice it is coloured by,
    the same colour in every figure of a report."""

    label: str
    points: tuple[Point, ...]
    baseline: bool = False
    colour_key: str = ""


@dataclass(frozen=True)
class FigureData:
    kind: str  # curve | bars | epochs (the validation curves)
    name: str  # the files' stem
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    log_x: bool = False
    cost_label: str | None = None
    cost: tuple[Series, ...] = field(default_factory=tuple)  # per bar, in the bars' order
    caption: str = ""


def study_spec(study: Study) -> FigureSpec:
    """The declaration the runs logged; runs that declare differently are refused."""
    declared: list[FigureSpec] = []
    for row in _finished(study.rows):
        spec = FigureSpec.from_params(row.params)
        if spec not in declared:
            declared.append(spec)
    if len(declared) > 1:
        shown = "; ".join(str(spec) for spec in declared)
        raise UserError(f"the runs declare different figures (report.*): {shown}")
    return declared[0] if declared else FigureSpec()


def study_figure(study: Study, spec: FigureSpec) -> FigureData:
    """The study's figure: a curve against `report.x`, or bars beside their cost."""
    metric = spec.metric or _default_metric(study)
    rows = [row for row in _finished(study.rows) if _value(row, metric) is not None]
    if not rows:
        raise UserError(f"no finished run logged {metric!r} (report.metric)")
    x = _x_key(study, spec)
    if spec.kind == "curve" or (spec.kind == "auto" and x is not None):
        if x is None:
            raise UserError(
                f"report.kind=curve needs a swept number as report.x; the runs vary in "
                f"{one_of(_setting_keys(study)) if _setting_keys(study) else 'nothing but seed'}"
            )
        return _curve(study, spec, rows, metric, x)
    return _bars(study, spec, rows, metric)


def _default_metric(study: Study) -> str:
    logged = any(DEFAULT_METRIC in row.metrics for row in study.rows)
    return DEFAULT_METRIC if logged else study.metric


def _finished(rows: list[RunRow]) -> list[RunRow]:
    return [row for row in rows if row.status == "FINISHED"]


def _value(row: RunRow, metric: str) -> float | None:
    return objective_value(row.metrics, metric)


def _setting_keys(study: Study) -> list[str]:
    return [c for c in study.columns if c != "seed"]


def _x_key(study: Study, spec: FigureSpec) -> str | None:
    numeric = [k for k in _setting_keys(study) if k not in GROUPS and _numeric(study.rows, k)]
    if spec.x is None:
        return numeric[0] if numeric else None
    if spec.x not in numeric:
        raise UserError(
            f"report.x={spec.x}: not a number the runs vary in"
            + (f"; they vary in {one_of(numeric)}" if numeric else "")
        )
    return spec.x


def _numeric(rows: list[RunRow], key: str) -> bool:
    values = {row.params[key] for row in rows if key in row.params}
    return len(values) >= SWEPT_AT_LEAST and all(_as_float(v) is not None for v in values)


def _as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def label_columns(study: Study, exclude: tuple[str, ...] = ()) -> list[str]:
    """The varying keys that name a setting, without those the others already tell apart
    (in a domain-adaptation study, `dataset` and `adapt` follow from `domain_method`); the
    one with the most values first: the method a bar's colour and label lead with."""
    columns = [c for c in _setting_keys(study) if c not in exclude]
    distinct = len({_values(row, columns) for row in study.rows})
    for column in list(columns):
        fewer = [c for c in columns if c != column]
        if len({_values(row, fewer) for row in study.rows}) == distinct:
            columns = fewer
    return sorted(columns, key=lambda c: -len({row.params.get(c) for row in study.rows}))


def _values(row: RunRow, columns: list[str]) -> tuple[str, ...]:
    return tuple(row.params.get(c, "") for c in columns)


def setting_label(row: RunRow, columns: list[str], short: bool = True) -> str:
    """`freeze=lora tpc=2 lr=0.001`, as a run's name shows keys and values; a single key's
    value alone."""
    values = [row.params.get(c, "") for c in columns]
    if short:
        values = [short_value(v) for v in values]
    if len(columns) == 1:
        return values[0]
    keys = short_keys(columns)
    return " ".join(f"{keys[c]}={v}" for c, v in zip(columns, values, strict=True))


def _is_baseline(row: RunRow, spec: FigureSpec) -> bool:
    """Whether the run is of the baseline setting `report.compare` names."""
    wanted = spec.compare
    return isinstance(wanted, Mapping) and all(
        row.params.get(k) == str(v) for k, v in wanted.items()
    )


def _compare(spec: FigureSpec, rows: list[RunRow], metric: str) -> FigureSpec:
    """The baseline: as declared, checked against the runs; undeclared, the scratch model
    where the runs logged one."""
    scratch_logged = any(_value(row, f"{SCRATCH}/{metric}") is not None for row in rows)
    if spec.compare is None:
        return replace(spec, compare=SCRATCH if scratch_logged else None)
    if spec.compare == SCRATCH and not scratch_logged:
        raise UserError(
            f"report.compare=scratch but no run logged {SCRATCH}/{metric}; "
            "train with compare_scratch=true"
        )
    if isinstance(spec.compare, Mapping) and not any(_is_baseline(r, spec) for r in rows):
        seen = {k: sorted({r.params.get(k, "") for r in rows}) for k in spec.compare}
        raise UserError(f"report.compare={dict(spec.compare)} matches no finished run: {seen}")
    return spec


def _curve(study: Study, spec: FigureSpec, rows: list[RunRow], metric: str, x: str) -> FigureData:
    spec = _compare(spec, rows, metric)
    columns = label_columns(study, exclude=(x,))
    method = ""  # named beside scratch: `transfer` (from a source run) or `fine-tune`
    if spec.compare == SCRATCH:
        transfer = any(r.params.get("role", "").startswith("transfer") for r in rows)
        method = "transfer" if transfer else "fine-tune"
    lines = []
    for setting, group in _labelled_groups(rows, columns):
        label = " ".join(filter(None, [method, setting])) or metric
        lines.append(_along(x, label, group, metric, _is_baseline(group[0], spec)))
        if spec.compare == SCRATCH:
            scratch = " ".join(filter(None, [SCRATCH, setting]))
            lines.append(_along(x, scratch, group, f"{SCRATCH}/{metric}", True))
    series = tuple(line for line in lines if line is not None)
    xs = [p.x for s in series for p in s.points]
    x_label = spec.x_label or x
    title = spec.title or (
        f"Does transfer beat training from scratch as {x_label} grows?"
        if spec.compare == SCRATCH
        else f"How does {metric} change with {x_label}?"
    )
    return FigureData(
        "curve",
        "figure",
        title,
        x_label,
        axis_label(metric),
        series,
        log_x=min(xs) > 0 and max(xs) / min(xs) >= 10,
        caption=_caption(series),
    )


def _labelled_groups(rows: list[RunRow], columns: list[str]) -> list[tuple[str, list[RunRow]]]:
    """The runs of each setting (their values of `columns`), in the order first seen, with
    its label: short values (`lr=0.001`), in full where two short ones would read the same."""
    groups: dict[tuple[str, ...], list[RunRow]] = {}
    for row in rows:
        groups.setdefault(_values(row, columns), []).append(row)
    labels = [setting_label(group[0], columns) for group in groups.values()]
    if len(set(labels)) < len(labels):
        labels = [setting_label(group[0], columns, short=False) for group in groups.values()]
    return list(zip(labels, groups.values(), strict=True))


def _along(x: str, label: str, rows: list[RunRow], metric: str, baseline: bool) -> Series | None:
    """The runs' `metric` at each value of `x`, a point per value; None if none logged it."""
    by_x: dict[float, list[float]] = {}
    for row in rows:
        value = _value(row, metric)
        if value is not None:
            by_x.setdefault(float(row.params[x]), []).append(value)
    points = tuple(Point(at, tuple(values)) for at, values in sorted(by_x.items()))
    return Series(label, points, baseline, label) if points else None


def _bars(study: Study, spec: FigureSpec, rows: list[RunRow], metric: str) -> FigureData:
    spec = _compare(spec, rows, metric)
    columns = label_columns(study)
    cost_metric = _cost_metric(spec, rows)
    bars: list[tuple[Series, tuple[float, ...]]] = []  # each bar with its cost's values
    for setting, group in _labelled_groups(rows, columns):
        label = setting or metric
        bar = Point(label, _present(group, metric))
        key = _colour_key(group[0], columns, label)
        cost = _present(group, cost_metric) if cost_metric else ()
        bars.append((Series(label, (bar,), _is_baseline(group[0], spec), key), cost))
        scratch = _present(group, f"{SCRATCH}/{metric}") if spec.compare == SCRATCH else ()
        if scratch:  # its cost is not logged: none drawn
            name = f"{SCRATCH} ({label})" if columns else SCRATCH
            bars.append((Series(name, (Point(name, scratch),), True, SCRATCH), ()))
    bars.sort(key=lambda bar: bar[0].points[0].mean, reverse=not lower_is_better(metric))
    costs = tuple(
        Series(bar.label, (Point(bar.label, cost),), bar.baseline, bar.colour_key)
        for bar, cost in bars
        if cost
    )
    what = ", ".join(short_keys(columns).values()) or "setting"
    title = spec.title or (
        f"Which {what} gives the best {metric}" + (", at what cost?" if costs else "?")
    )
    return FigureData(
        "bars",
        "figure",
        title,
        axis_label(metric),
        what,
        tuple(bar for bar, _ in bars),
        cost_label=axis_label(cost_metric) if costs else None,
        cost=costs,
        caption=_caption(tuple(bar for bar, _ in bars)),
    )


def _present(rows: list[RunRow], metric: str) -> tuple[float, ...]:
    return tuple(v for v in (_value(r, metric) for r in rows) if v is not None)


def _colour_key(row: RunRow, columns: list[str], label: str) -> str:
    """A bar's colour: its value of the key with the most values (label_columns' first), so
    that every bar of one method (freeze=lora) shares it."""
    return f"{columns[0]}={row.params.get(columns[0], '')}" if columns else label


def _cost_metric(spec: FigureSpec, rows: list[RunRow]) -> str | None:
    if spec.cost == NO_COST:
        return None
    logged = [m for m in COST_METRICS if any(m in r.metrics for r in rows)]
    if spec.cost != "auto":
        if not any(spec.cost in r.metrics for r in rows):
            raise UserError(f"report.cost={spec.cost}: no finished run logged it; use none")
        return spec.cost
    for metric in logged:
        if len({round(r.metrics[metric], 6) for r in rows if metric in r.metrics}) > 1:
            return metric
    return logged[-1] if logged else None


def val_curves(study: Study, histories: Mapping[str, list[tuple[int, float]]]) -> FigureData:
    """Validation accuracy per epoch, mean ± std over the seeds of each setting: the best
    MAX_VAL_CURVES settings by the objective. `histories`: run id -> (epoch, val/acc)."""
    columns = label_columns(study)
    groups = seed_groups(study)
    series = []
    for _, rows in groups[:MAX_VAL_CURVES]:
        by_epoch: dict[float, list[float]] = {}
        for row in rows:
            for epoch, value in histories.get(row.run_id, []):
                by_epoch.setdefault(float(epoch), []).append(value)
        if by_epoch:
            label = setting_label(rows[0], columns) or "val/acc"
            points = tuple(Point(e, tuple(v)) for e, v in sorted(by_epoch.items()))
            series.append(Series(label, points, False, label))
    shown = f" (best {len(series)} of {len(groups)} settings)" if len(groups) > len(series) else ""
    return FigureData(
        "epochs",
        "val_curves",
        f"Validation accuracy per epoch{shown}",
        "epoch",
        axis_label("val/acc"),
        tuple(series),
        caption="Mean over seeds, band: ± std (n: the seeds still training at that epoch).",
    )


def axis_label(metric: str) -> str:
    """`test/acc (fraction correct)`: the metric with its unit where known."""
    unit = UNITS.get(metric.rsplit("/", 1)[-1])
    return f"{metric} ({unit})" if unit else metric


def _caption(series: tuple[Series, ...]) -> str:
    ns = sorted({p.n for s in series for p in s.points})
    seeds = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"
    return f"Mean ± std over seeds ({seeds}); faint points: single seeds."
