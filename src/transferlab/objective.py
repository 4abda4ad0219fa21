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
)
# The one list of keys that never change what a run computes: where results go, how often
# checkpoints are written, how progress is shown, which trial of which sweep a run is. The
# source stage's reuse key ignores them, resume and rerun accept any value for them, and
# reports never show them as swept. A dotted entry covers its own subtree only.
NOT_RESULT_KEYS = (
    "output_dir",
    "tracking",
    "experiment_name",
    "optimize_metric",
    "compare_scratch",
    "feature_cache",
    "checkpoint",
    "callbacks.progress_bar",
    "resume",
    "optuna",
    "hydra",
)
# Words in the names of metrics whose smaller values are better (and durations, `*_s`); any
# other metric (accuracies, accuracy gains, rates such as images per second) is maximised.
MINIMISED = ("loss", "latency", "time/", "size", "params_", "error")


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
