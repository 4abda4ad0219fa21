"""Entry point: `transferlab-rank [overrides]` (or `-cn rank_sources`): which candidate source
backbone to transfer from, ranked by transferability scores of its frozen features on the
target's train split, before any training (issue 13).

Kept light like train.py: the config (conf/rank.yaml) is checked by rank_config before any
run; the ranking itself (features, scores, MLflow) is transferlab.ranking.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from transferlab.config_keys import refuse_moved_overrides
from transferlab.errors import exits_on_user_error
from transferlab.rank_config import validate_ranking
from transferlab.runtime import setup


def run(cfg: DictConfig) -> None:
    candidates, scores = validate_ranking(cfg)
    from transferlab.rank_validation import finetune_configs
    from transferlab.ranking import rank_candidates

    rank_candidates(cfg, candidates, scores, finetune_configs(cfg, candidates))


def main() -> None:
    """The console script: process settings first, then Hydra parses the command line."""
    setup()
    with exits_on_user_error():
        refuse_moved_overrides(sys.argv[1:])
    hydra_app()


@hydra.main(version_base="1.3", config_path="pkg://transferlab.conf", config_name="rank")
def hydra_app(cfg: DictConfig) -> None:
    with exits_on_user_error():
        run(cfg)


if __name__ == "__main__":
    main()
