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
# Keys that say where results go, not what is computed.
BOOKKEEPING_KEYS = (
    "output_dir",
    "tracking",
    "experiment_name",
    "optimize_metric",
    "compare_scratch",
    "feature_cache",
    "optuna",  # which sweep trial a run is, not what it computes
)


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


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
