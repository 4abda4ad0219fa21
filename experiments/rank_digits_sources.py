"""The offline ranking study (`make rank-study`): trains the source networks with
transferlab-train's pipeline (in-process), ranks them on digits 5-9 with
experiments/rank_digits_sources.yaml (once to cache their features, then again, from the
cache, with validation by fine-tuning), and prints the speed-up of ranking over fine-tuning
from the runs' recorded times (rank/rank_s, rank/finetune_fit_s).

Run from the repository root: `.venv/bin/python -m experiments.rank_digits_sources
[overrides of the ranking]`, e.g. another fine-tuning method:
"rank.finetune=['freeze=linear_probe','~callbacks.progress_bar']".
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import rank
from transferlab.config import validate
from transferlab.rank_config import composed
from transferlab.runtime import setup

OUTPUT = "outputs/rank_digits_sources"
SOURCE_EPOCHS = "trainer.max_epochs=15"  # as conf/source/digits_0_4.yaml trains its source
SOURCES = {  # name: transferlab-train overrides of its source task (small_cnn, full training)
    "digits_0_4": ["dataset.task.classes=[0,1,2,3,4]"],
    "digits_0_4_noisy": ["dataset.task.classes=[0,1,2,3,4]", "dataset.task.label_noise=0.5"],
    "digits_0_1": ["dataset.task.classes=[0,1]"],
    "synthetic": ["dataset=synthetic", "dataset.image_size=8"],
    "digits_0_4_wide": ["dataset.task.classes=[0,1,2,3,4]", "backbone.arch=small_cnn_wide"],
}
COMMON = [
    "freeze=none",
    SOURCE_EPOCHS,
    "~callbacks.progress_bar",
    "experiment_name=rank_digits_sources",
]


def with_output(cfg: DictConfig, folder: str) -> DictConfig:
    with open_dict(cfg):
        cfg.output_dir = f"{OUTPUT}/{folder}"
    return cfg


def train_source(name: str, overrides: list[str]) -> str:
    """The source run's weights as the URI a candidate loads (sha256 checked)."""
    from transferlab.pipeline import run_stages

    cfg = with_output(composed([*COMMON, *overrides], "train"), f"sources/{name}")
    validate(cfg)
    result = run_stages(cfg, {"backbone": name}, {})
    return f"runs:/{result.run_id}/backbone.pt"


def candidates(weights: dict[str, str]) -> list[dict]:
    trained = [
        {"backbone": "small_cnn", "weights_path": uri, "name": name}
        | ({"arch": "small_cnn_wide"} if name.endswith("_wide") else {})
        for name, uri in weights.items()
    ]
    return [*trained, {"backbone": "small_cnn", "name": "random_init"}]


def ranking(listed: list[dict], validated: bool, overrides: list[str]) -> None:
    given = [f"rank.validate={validated}", *overrides]
    cfg = with_output(composed(given, "rank_digits_sources"), "rank")
    cfg.rank.candidates = OmegaConf.create(listed)
    rank.run(cfg)


def summary(uri: str = "sqlite:///mlflow.db") -> str:
    """The latest validated ranking of the study as README tables: each candidate's scores
    and fine-tuned test/acc, tau and r per score, and ranking's speed against fine-tuning."""
    from mlflow.tracking import MlflowClient

    from transferlab.report_markdown import format_number, markdown_table
    from transferlab.report_ranking import AGREEMENT, METRIC, recorded_agreement, recorded_rows

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rank_digits_sources")
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        "tags.`transferlab.role` = 'ranking' and metrics.`rank/finetune_fit_s` > 0",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    scores = parent.data.tags["transferlab.rank_scores"].split(",")
    rows = recorded_rows(client, parent)
    body = [
        [r.name, *(format_number(r.score(s)) for s in scores), _accuracy(r.metrics)] for r in rows
    ]
    agreement = recorded_agreement(parent, scores)
    tau = [[s, *(format_number(agreement[s][k]) for k in AGREEMENT)] for s in agreement]
    rank_s, fit_s = (parent.data.metrics[f"{METRIC}{k}"] for k in ("rank_s", "finetune_fit_s"))
    tuned = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`transferlab.role` = "
        "'finetune'",
    )
    speed = (
        f"Ranking the {len(rows)} candidates from cached features took {rank_s:.2f} s "
        f"(rank/rank_s); fine-tuning them ({len(tuned)} runs: candidates x seeds) took "
        f"{fit_s:.1f} s (rank/finetune_fit_s, the sum of their time/fit_s): {fit_s / rank_s:.0f}x."
    )
    tables = [
        *markdown_table(["candidate", *scores, "fine-tuned test/acc"], body),
        "",
        *markdown_table(["score", "weighted Kendall tau", "Pearson r"], tau),
        "",
        speed,
    ]
    return "\n".join(tables)


def _accuracy(metrics: dict[str, float]) -> str:
    return f"{metrics['finetune_acc']:.3f} ± {metrics['finetune_acc_std']:.3f}"


def main() -> None:
    """Command-line arguments: overrides of the ranking's config (e.g. its rank.finetune)."""
    setup()
    weights = {name: train_source(name, overrides) for name, overrides in SOURCES.items()}
    listed = candidates(weights)
    ranking(listed, False, sys.argv[1:])  # extracts each candidate's features into the cache
    ranking(listed, True, sys.argv[1:])  # from the cache, then fine-tunes each to check
    print(summary())


if __name__ == "__main__":
    main()
