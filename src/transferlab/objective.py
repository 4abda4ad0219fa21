"""What a run is judged by, and the names the pipeline, sweeps and reports share.

Light on purpose (no torch, no MLflow): reports and Hydra callbacks import it.
"""

from __future__ import annotations

# The config groups a run is composed of; each choice is logged as a param.
GROUPS = (
    "backbone",
    "dataset",
    "head",
    "freeze",
    "regularizer",
    "optimizer",
    "scheduler",
    "trainer",
    "source",
    "adapt",
    "target_domain",
)
# The one list of keys that never change what a run computes: where results go, how often
# checkpoints are written, how progress is shown, which trial of which sweep a run is. The
# source stage's reuse key ignores them, resume and rerun accept any value for them, and
# reports never show them as swept. A dotted entry covers its own subtree only.
NOT_RESULT_KEYS = (
    "output_dir",
    "tracking",
    "register",
    "report",
    "experiment_name",
    "optimize_metric",
    "compare_scratch",
    "feature_cache",
    "dataset.cache_dir",  # where generated data (printed_digits) is cached, not which
    "checkpoint",
    "callbacks.progress_bar",
    "resume",
    "optuna",
    "hydra",
)
# Words in the names of metrics whose smaller values are better (and durations, `*_s`); any
# other metric (accuracies, accuracy gains, rates such as images per second) is maximised.
MINIMISED = ("loss", "latency", "time/", "size", "params_", "error", "entropy", "val/dev")


def changes_result(key: str) -> bool:
    """Whether the dotted `key` (a config key or an override's key) can change a result."""
    key = key.lstrip("+~").replace("/", ".")  # a group path: hydra/launcher=joblib
    return not any(key == k or key.startswith(f"{k}.") for k in NOT_RESULT_KEYS)


def lower_is_better(metric: str) -> bool:
    """The objective's direction, derived from its name: what the Optuna sweeper, the sweep
    parent's best run and the report all use (one source of truth)."""
    name = metric.lower()
    if "per_s" in name:  # a rate (images per second)
        return False
    return name.endswith("_s") or any(word in name for word in MINIMISED)


def direction(metric: str) -> str:
    """Optuna's name for the direction of `metric`."""
    return "minimize" if lower_is_better(metric) else "maximize"


# How a run with a target domain chooses its checkpoint, stops early and scores a sweep's
# trial (`adapt.selection`): each selection's metric for what watches `val/acc` and for what
# watches `val/loss`. Only `oracle` reads the target's labels (an upper bound, never a result).
SELECTIONS = {
    "source_val": {"val/acc": "val/acc", "val/loss": "val/loss"},
    "entropy": {"val/acc": "target/val/entropy", "val/loss": "target/val/entropy"},
    "dev": {"val/acc": "target/val/dev", "val/loss": "target/val/dev"},
    "oracle": {"val/acc": "target/val/acc", "val/loss": "target/val/loss"},
}
TARGET_LABELLED = ("target/val/acc", "target/val/loss", "target/test/")  # what reads its labels


def adaptation_node(cfg) -> dict:
    """The run's `adapt` node; a run recorded before adaptation existed has none."""
    return cfg.get("adapt") or {"_target_": None}


def selection_of(cfg) -> str | None:
    """A run's `adapt.selection` where it has a target domain, else None."""
    if (cfg.get("target_domain") or {}).get("_target_") is None:
        return None
    return adaptation_node(cfg).get("selection", "source_val")


def selected_metric(metric: str, selection: str | None) -> str:
    """The metric a run watches where the config names `metric`: with a target domain, what
    watches the validation (`val/acc`, `val/loss`) follows the selection, so the checkpoint,
    early stopping and the objective never read the target's labels unless it is `oracle`."""
    if selection is None:
        return metric
    return SELECTIONS[selection].get(metric, metric)


def run_metric(cfg) -> str:
    """The objective a run returns to sweepers: `optimize_metric`, as its selection reads it."""
    return selected_metric(cfg.optimize_metric, selection_of(cfg))


def objective_value(metrics: dict[str, float], metric: str) -> float | None:
    """The checkpointed best of `metric` where logged (`<metric>_best`), else its final
    value: what a run returns to Hydra sweepers."""
    for key in (f"{metric}_best", metric):
        if key in metrics:
            return metrics[key]
    return None


def overrides_as_params(overrides: list[str]) -> dict[str, str]:
    """Hydra command-line overrides as `key: value` (`+key` adds a key; `~key`, a deletion,
    sets nothing)."""
    pairs = (o.partition("=") for o in overrides if not o.startswith("~"))
    return {key.lstrip("+"): value for key, _, value in pairs}
