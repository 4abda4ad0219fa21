"""The configs of the stages a run derives from its own: the source stage it pretrains on,
and the scratch baseline it is compared with. Plain config edits: no torch here.

Each is derived from the run's config as composed (interpolations unresolved), merged with
its own keys (`source.*`, `scratch.*`), and only then resolved: a value that follows
another (a cosine schedule's `T_max: ${trainer.max_epochs}`) follows the stage's own.
"""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

from transferlab.components import is_classical_head
from transferlab.objective import changes_result

# What a derived stage trains with where the run's own choice would not fit: each node is
# its group's built-in choice (conf/head/linear.yaml, ...), recorded under that name.
LINEAR_HEAD = {"_target_": "transferlab.models.heads.LinearHead", "dropout": 0.0}
FULL_FINE_TUNE = {"_target_": "transferlab.finetune.freezing.FullFineTune"}
NO_REGULARIZER = {"_target_": None}
NO_ADAPTATION = {"_target_": None, "selection": "source_val"}
NO_TARGET_DOMAIN = {"_target_": None}
DERIVED_NODES = {
    "head": ("linear", LINEAR_HEAD),
    "freeze": ("none", FULL_FINE_TUNE),
    "regularizer": ("none", NO_REGULARIZER),
    "adapt": ("none", NO_ADAPTATION),
    "target_domain": ("none", NO_TARGET_DOMAIN),
}


def resolved(cfg: DictConfig) -> DictConfig:
    """A plain copy with every interpolation replaced by its value."""
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def derived_stages(cfg: DictConfig) -> dict[str, DictConfig]:
    """The derived stages the run will train, by role, resolved (for validation)."""
    stages = {}
    if cfg.source:
        stages["source"] = source_config(cfg)
    if cfg.compare_scratch:
        stages["scratch"] = scratch_config(cfg)
    return stages


def stage_config(cfg: DictConfig, role: str, weights_path: str | None = None) -> DictConfig:
    """The resolved config this run's `role` stage trains with; a transfer stage loads the
    source weights from `weights_path`."""
    if role == "source":
        return source_config(cfg)
    if role == "scratch":
        return scratch_config(cfg)
    main = resolved(cfg)
    return with_source_weights(main, weights_path) if role == "transfer" else main


def source_config(cfg: DictConfig) -> DictConfig:
    """The run's config with the source task merged in. The source network trains whole,
    with a linear head, whatever the target's freeze strategy, head or regulariser, and
    adapts to no domain: a run's target domain is its own stage's."""
    source = _single_stage(cfg)
    source.head = LINEAR_HEAD
    source.adapt, source.target_domain = NO_ADAPTATION, NO_TARGET_DOMAIN
    _train_everything(source)
    return resolved(OmegaConf.merge(source, cfg.source))


def scratch_config(cfg: DictConfig) -> DictConfig:
    """The same model on the same target data from random weights, with its own budget
    (`scratch.*`: by default a generous epoch cap, ended by early stopping): a baseline
    trained as well as it can be, not on the transferred model's short schedule. A neural
    head trains with the whole network; a scikit-learn head is fitted on the random
    network's features."""
    scratch = _single_stage(cfg)
    if not is_classical_head(cfg.head):
        _train_everything(scratch)
    scratch.regularizer = NO_REGULARIZER  # there is no source to stay close to
    merged = OmegaConf.merge(scratch, cfg.scratch)
    return resolved(with_source_weights(merged, None))


def with_source_weights(cfg: DictConfig, weights_path: str | None) -> DictConfig:
    """The config with the backbone loading `weights_path` (None: random init) instead of
    the weights it names. Only the keys the backbone config has are set: torchvision
    backbones name weights (`weights`), timm ones a flag (`pretrained`)."""
    updated = cfg.copy()
    updated.backbone.weights_path = weights_path
    if "weights" in updated.backbone:
        updated.backbone.weights = None
    if "pretrained" in updated.backbone:
        updated.backbone.pretrained = False
    return updated


def _single_stage(cfg: DictConfig) -> DictConfig:
    """A copy that runs one stage alone: no source stage, no baseline, no folds."""
    single = cfg.copy()
    OmegaConf.set_struct(single, False)  # as composed, Hydra's config takes no new keys
    single.source = {}
    single.scratch = {}
    single.compare_scratch = False
    single.cv.folds = None
    single.pop("optuna", None)  # only the main stage reports to an Optuna trial
    return single


def _train_everything(cfg: DictConfig) -> None:
    """Every layer trains at the same rate, unregularised: no pretrained weights to protect."""
    cfg.freeze = FULL_FINE_TUNE
    OmegaConf.update(cfg, "optimizer.param_groups.backbone_lr_mult", 1.0)
    OmegaConf.update(cfg, "optimizer.param_groups.layer_decay", None)
    cfg.regularizer = NO_REGULARIZER


def config_key(cfg: DictConfig) -> str:
    """Identifies what a config computes, not where it is written or how it is shown: the
    keys of objective.NOT_RESULT_KEYS are left out."""
    return hashlib.sha256(OmegaConf.to_yaml(result_keys(cfg)).encode()).hexdigest()[:16]


def result_keys(cfg: DictConfig) -> DictConfig:
    """The resolved config without the keys that cannot change a result."""
    return OmegaConf.create(_result_tree(OmegaConf.to_container(cfg, resolve=True), ""))


def _result_tree(tree: dict, prefix: str) -> dict:
    kept = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not changes_result(dotted):
            continue
        kept[key] = _result_tree(value, f"{dotted}.") if isinstance(value, dict) else value
    return kept


def derived_choices(choices: dict[str, str], cfg: DictConfig) -> dict[str, str]:
    """The group choices of a source or scratch stage, which replace some of the run's: a
    group whose node the stage replaced is recorded under its built-in choice's name."""
    replaced = {
        group: choice
        for group, (choice, node) in DERIVED_NODES.items()
        if group in choices and OmegaConf.to_container(cfg[group]) == node
    }
    return {**choices, **replaced}
