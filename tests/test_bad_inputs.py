"""Bad input, systematically: wrong types, out-of-range values, unknown keys and options, and
conflicting options in every config group, each through the real entry point.

Each must exit non-zero with one clear line that names the key (and, where there is a
choice, the accepted values), print no traceback, and leave no MLflow run RUNNING.

"One line" means: transferlab's own errors are exactly one line on stderr, `error: ...`.
Hydra's composition errors (an unknown group option, a key set without `+`) keep Hydra's
format: a first line that names the override, then Hydra's details (the available options,
one per line). Hydra's closing hint (`Set the environment variable HYDRA_FULL_ERROR=1 ...`)
and blank lines are not counted.

The cases run in-process (`transferlab.train.main` with a patched `sys.argv`): a new Python
process costs ~10 s here. One real process shows the exit code and stderr for real.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.conftest import PYTHON, runs_of
from transferlab.config_keys import schema
from transferlab.train import main

HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"


@dataclass(frozen=True)
class Bad:
    overrides: str  # as typed on the command line
    names: tuple[str, ...]  # the key first, then what the message must name besides it
    by_hydra: bool = False  # Hydra's own composition error, in Hydra's format
    late: bool = False  # found where the data is built: the run is recorded FAILED


def not_finite(overrides: str, named: str | None = None) -> Bad:
    """NaN or inf where a number is read. `named`: the key=value as the message names it,
    when it is not the last override's own."""
    return Bad(overrides, (named or overrides.split()[-1].lstrip("+"), "must be a finite number"))


BAD: dict[str, list[Bad]] = {
    "backbone": [
        Bad("backbone.arch=resnet99", ("backbone.arch", "resnet18", "vit_b_16")),
        Bad("backbone=resnet18 backbone.weights=IMAGENET9K", ("backbone.weights", "IMAGENET1K_V1")),
        Bad("backbone.input_size=4", ("backbone.input_size", "[8, 4096]")),
        Bad("backbone.input_size=big", ("backbone.input_size", "whole number")),
        Bad("backbone.input_size=100000", ("backbone.input_size=100000", "[8, 4096]")),
        Bad("+backbone.depth=3", ("backbone.depth", "arch", "weights_path")),
        Bad("backbone._target_=transferlab.models.nowhere.build", ("backbone._target_",)),
    ],
    "dataset": [
        Bad(
            "dataset.task.val_fraction=0.5 dataset.task.test_fraction=0.5",
            ("dataset.task.val_fraction=0.5", "dataset.task.test_fraction=0.5", "< 1"),
        ),
        Bad("dataset.task.classes=3", ("dataset.task.classes", "at least 2")),
        Bad("dataset.task.split_seed=-1", ("dataset.task.split_seed", "[0, 4294967295]")),
        Bad("+dataset.root=/data", ("dataset.root", "task")),
        Bad("dataset=synthetic dataset.num_images=many", ("dataset.num_images", "a number")),
        Bad("dataset=synthetic dataset.num_classes=1", ("dataset.num_classes", ">= 2"), late=True),
    ],
    "freeze": [
        Bad("freeze=nope", ("freeze/nope", "linear_probe", "gradual"), by_hydra=True),
        Bad("freeze=gradual freeze.milestones=3", ("freeze.milestones", "[1, 2, 3]")),
        Bad("freeze=partial freeze.k=two", ("freeze.k", "whole number")),
        Bad("freeze=gradual freeze.milestones=[1,80]", ("freeze.milestones", "trainer.max_epochs")),
    ],
    "optimizer": [
        Bad("+optimizer.lrr=0.1", ("optimizer.lrr", "did you mean lr?", "weight_decay")),
        Bad("optimizer.lrr=0.1", ("optimizer.lrr", "+optimizer.lrr"), by_hydra=True),
        Bad("optimizer.weight_decay=-0.1", ("optimizer.weight_decay", ">= 0")),
        Bad("optimizer=sgd optimizer.momentum=0", ("momentum", "nesterov")),
        Bad("optimizer=sgd optimizer.nesterov=yes", ("optimizer.nesterov", "true or false")),
        Bad("optimizer=adam +optimizer.betas=[0.9,1.5]", ("betas", "beta parameter at index 1")),
        Bad(
            "optimizer.param_groups.backbone_lr_mult=fast",
            ("optimizer.param_groups.backbone_lr_mult", "number"),
        ),
        Bad("optimizer._target_=torch.optim.Adamw", ("optimizer._target_", "Adamw")),
    ],
    "scheduler": [
        Bad(
            "scheduler=plateau scheduler.lightning.monitor=val/accuracy",
            ("scheduler.lightning.monitor", "val/acc"),
        ),
        Bad("scheduler=plateau scheduler.mode=maximum", ("scheduler.mode", "min or max")),
        Bad("scheduler=plateau scheduler.factor=2", ("factor", "< 1.0")),
        Bad("scheduler=step scheduler.step_size=0", ("scheduler.step_size", ">= 1")),
        Bad("scheduler=step scheduler.gamma=abc", ("scheduler.gamma", "a number")),
        Bad("+scheduler.warmup_epochs=2", ("scheduler.warmup_epochs", "T_max", "eta_min")),
        Bad("scheduler=none +scheduler.gamma=0.1", ("scheduler.gamma", "no options")),
    ],
    "head": [
        Bad("head.name=resnet", ("head.name has moved", "head=<option>", "head._target_")),
        Bad("head._target_=transferlab.models.heads.ConvHead", ("head._target_", "ConvHead")),
        Bad("head=mlp head.hidden=0", ("head.hidden", "[1, 65536]")),
        Bad("head=mlp head.hidden=10000000", ("head.hidden=10000000", "[1, 65536]")),
        Bad("head=svm freeze=linear_probe head.C=abc", ("head.C", "a number")),
        Bad("+head.width=64", ("head.width", "dropout")),
        Bad("head=svm freeze=linear_probe head.kernel=cubic", ("head.kernel", "rbf", "sigmoid")),
        Bad("head=logreg freeze=linear_probe head.max_iter=0", ("head.max_iter", ">= 1")),
    ],
    "loss": [
        Bad("loss.label_smoothing=high", ("loss.label_smoothing", "[0, 1)")),
        Bad("+loss.smoothing=0.1", ("loss.smoothing", "label_smoothing")),
        Bad("loss=0.1", ("loss", "label_smoothing")),
    ],
    "augment": [
        Bad("augment.cutmix_alpha=-1", ("augment.cutmix_alpha", ">= 0")),
        Bad("+augment.mixup=0.2", ("augment.mixup", "mixup_alpha")),
    ],
    "regularizer": [
        Bad("regularizer.name=sideways", ("regularizer.name has moved", "regularizer._target_")),
        Bad("regularizer=l2_sp regularizer.alpha=-0.01", ("regularizer.alpha", ">= 0")),
        Bad("regularizer=kl_source regularizer.temperature=0", ("regularizer.temperature", "> 0")),
        Bad("regularizer=kl_source regularizer.target=labels", ("regularizer.target", "logits")),
        Bad("regularizer=l2_sp +regularizer.gamma=1", ("regularizer.gamma", "alpha", "beta")),
        Bad(
            "regularizer=l2_sp head=svm freeze=linear_probe",
            ("regularizer=l2_sp", "head=svm", "regularizer=none"),
        ),
    ],
    "loader": [
        Bad("loader.epoch_samples=0", ("loader.epoch_samples", "> 0")),
        Bad("loader.num_workers=1.5", ("loader.num_workers", "auto")),
        Bad("loader.num_workers=100000", ("loader.num_workers=100000", "[0, 256]", "auto")),
        Bad(
            "loader.batch_size=100000000000000000000",
            ("loader.batch_size=100000000000000000000", "<= 1048576"),
        ),
        Bad("loader.epoch_samples=10000000000000", ("loader.epoch_samples", "<= 2147483648")),
        Bad("+loader.workers=4", ("loader.workers", "num_workers")),
        Bad("~loader.batch_size", ("loader.batch_size", "required")),
        Bad("loader.device=gpu", ("loader.device", "auto, cpu or cuda")),
    ],
    "trainer": [
        Bad("trainer.max_epochs=ten", ("trainer.max_epochs", "whole number")),
        Bad("trainer.precision=15", ("trainer.precision", "32-true", "bf16-mixed")),
        Bad("trainer.accelerator=gpux", ("trainer.accelerator", "cpu", "cuda")),
        Bad("trainer=ddp trainer.strategy=dpp", ("trainer.strategy", "ddp")),
        Bad("+trainer.max_epoch=3", ("trainer.max_epoch", "did you mean max_epochs?")),
        Bad("trainer.gpu.channels_last=1", ("trainer.gpu.channels_last", "true or false")),
    ],
    "cv": [
        Bad("cv.folds=3 compare_scratch=true", ("cv.folds", "compare_scratch")),
        Bad("cv.folds=two", ("cv.folds", ">= 2")),
        # more folds than the digits' smallest class has images in train+val: found in the
        # data, still before any run
        Bad("cv.folds=500", ("cv.folds=500", "smallest class", "at most")),
        Bad("+cv.k=5", ("cv.k", "folds")),
    ],
    "feature_cache": [
        Bad("feature_cache.enabled=maybe", ("feature_cache.enabled", "true or false")),
        Bad("+feature_cache.path=/tmp/features", ("feature_cache.path", "dir")),
    ],
    "tracking": [
        Bad("+tracking.url='sqlite:///mlflow.db'", ("tracking.url", "uri")),
        Bad("tracking.uri=[1,2]", ("tracking.uri", "null")),
        Bad("tracking.uri='sqlit:///mlflow.db'", ("tracking.uri", "sqlite", "postgresql")),
        Bad("tracking.system_metrics=maybe", ("tracking.system_metrics", "true, false or auto")),
    ],
    "register": [
        Bad("register.name=a/b", ("register.name='a/b'", "refused by the MLflow model registry")),
        Bad("register.alias=champion", ("register.alias=champion", "register.name")),
        Bad("register.name=m register.alias=latest", ("register.alias='latest'", "refused")),
        Bad("register.name=m head=svm", ("register.name=m", "scikit-learn head")),
    ],
    "report": [
        Bad("report.kind=pie", ("report.kind='pie'", "auto, curve or bars")),
        Bad("report.compare=linear_probe", ("report.compare='linear_probe'", "scratch")),
        Bad("report.x=dataset.task.per_class", ("dataset.task.per_class", "no config key")),
        Bad("report.compare={frooze:none}", ("'frooze'", "no config key or group")),
        Bad("+report.colour=red", ("report.colour", "kind, metric, x")),
    ],
    "checkpoint": [
        Bad("+checkpoint.every=2", ("checkpoint.every", "every_n_epochs")),
        Bad("checkpoint.every_n_epochs=0", ("checkpoint.every_n_epochs", ">= 1")),
        Bad("checkpoint.every_n_train_steps=-5", ("checkpoint.every_n_train_steps", "null")),
    ],
    "resume": [
        Bad("resume=[a,b]", ("resume", "run id")),
        Bad("resume=no-such-run", ("resume=no-such-run", "neither a checkpoint file nor a run")),
    ],
    "callbacks": [
        Bad(
            "callbacks.model_checkpoint.monitor=val/accuracy",
            ("callbacks.model_checkpoint.monitor", "val/acc"),
        ),
        Bad("callbacks.early_stopping.mode=down", ("callbacks.early_stopping.mode", "min or max")),
        Bad("+callbacks.swa=true", ("callbacks.swa", "_target_", "null")),
        Bad(
            "callbacks.early_stopping.patience=soon",
            ("callbacks.early_stopping.patience", "number"),
        ),
        Bad(
            "+callbacks.early_stopping.patient=3", ("callbacks.early_stopping.patient", "patience")
        ),
    ],
    "source": [
        Bad("source=mnist", ("source/mnist", "digits_0_4"), by_hydra=True),
        Bad(
            "source=digits_0_4 source.dataset.task.classes=[1]",
            ("source stage", "dataset.task.classes", "2"),
        ),
        Bad("source=digits_0_4 +source.trainer.max_epoch=3", ("source stage", "max_epochs")),
    ],
    "target_domain": [
        Bad("target_domain=mnist", ("target_domain/mnist", "printed_digits"), by_hydra=True),
        Bad(
            "target_domain=digits target_domain.task.classes=[0,1,2] adapt=mcc",
            ("target domain's classes", "dataset.task.classes", "target_domain.task.classes"),
        ),
        Bad("target_domain=digits target_domain.task.val_fraction=1.5", ("target_domain.task",)),
    ],
    "adapt": [
        Bad("adapt=dann", ("adapt=DANN", "target_domain=<option>")),
        Bad("target_domain=digits adapt=mcc adapt.selection=best", ("adapt.selection", "entropy")),
        Bad("target_domain=digits adapt=dann adapt.weight=-1", ("adapt.weight=-1", ">= 0")),
        Bad(
            "target_domain=digits adapt=dann optimize_metric=target/test/acc",
            ("optimize_metric='target/test/acc'", "adapt.selection=oracle"),
        ),
    ],
    "scratch": [
        Bad("compare_scratch=true scratch.trainer.max_epochs=0", ("scratch stage", "max_epochs")),
        Bad("compare_scratch=true +scratch.optimizer.lr=nan", ("scratch", "lr", "finite")),
    ],
    "settings": [
        Bad("optimize_metric=val/accuracy", ("optimize_metric", "val/acc", "test/loss")),
        Bad("seed=abc", ("seed", "whole number")),
        Bad("seed=${trainer.seed}", ("seed", "trainer.seed", "not found")),
        Bad("compare_scratch=maybe", ("compare_scratch", "true or false")),
        Bad("experiment_name=", ("experiment_name", "non-empty")),
        Bad("+lr=0.1", ("lr", "backbone", "optimizer")),
    ],
    "not finite": [
        not_finite("optimizer.lr=nan"),
        not_finite("optimizer.lr=inf"),
        not_finite("optimizer.weight_decay=-inf"),
        not_finite("optimizer=sgd optimizer.momentum=nan"),
        not_finite("optimizer.param_groups.backbone_lr_mult=inf"),
        not_finite("optimizer.param_groups.layer_decay=nan"),
        not_finite("optimizer=adam +optimizer.eps=nan"),
        not_finite("optimizer=adam +optimizer.betas=[0.9,nan]", "optimizer.betas[1]=nan"),
        not_finite("scheduler.eta_min=nan"),
        not_finite("scheduler=step scheduler.gamma=inf"),
        not_finite("scheduler=plateau scheduler.factor=nan"),
        not_finite("head.dropout=nan"),
        not_finite("head=mlp head.dropout=inf"),
        not_finite("head=svm freeze=linear_probe head.C=inf"),
        not_finite("head=logreg freeze=linear_probe head.C=nan"),
        not_finite("loss.label_smoothing=nan"),
        not_finite("augment.mixup_alpha=nan"),
        not_finite("augment.cutmix_alpha=inf"),
        not_finite("regularizer=l2_sp regularizer.alpha=nan"),
        not_finite("regularizer=l2_sp regularizer.beta=inf"),
        not_finite("regularizer=kl_source regularizer.weight=nan"),
        not_finite("regularizer=kl_source regularizer.temperature=inf"),
        not_finite("dataset.task.val_fraction=nan"),
        not_finite("dataset.task.test_fraction=-inf"),
        not_finite("dataset=synthetic dataset.signal=nan"),
        not_finite("source=digits_0_4 +source.dataset.task.val_fraction=nan"),
        not_finite("freeze=gradual freeze.warmup_epochs=nan"),
        not_finite("freeze=freeze_unfreeze freeze.unfreeze_at=inf"),
        not_finite("trainer.max_epochs=inf"),
        not_finite("trainer.gradient_clip_val=nan"),
        not_finite("+trainer.limit_train_batches=inf"),
        not_finite("+callbacks.early_stopping.min_delta=nan"),
        not_finite("loader.batch_size=inf"),
        not_finite("loader.epoch_samples=nan"),
        not_finite("checkpoint.every_n_epochs=inf"),
        not_finite("backbone.input_size=nan"),
        not_finite("seed=nan"),
    ],
}
CASES = [
    pytest.param(case, id=f"{group}:{case.overrides}")
    for group, cases in BAD.items()
    for case in cases
]


@pytest.fixture
def experiment(tmp_path) -> str:
    """Unique per case (test names this long would be cut to the same 100 characters)."""
    return f"bad-input-{tmp_path.name}"


@pytest.fixture
def cli(monkeypatch, capfd, tmp_path, tracking_uri, experiment, feature_cache_dir):
    """Runs the real entry point in-process on overrides; returns its exit code and stderr."""
    monkeypatch.chdir(tmp_path)
    common = [
        f"tracking.uri='{tracking_uri}'",
        f"experiment_name='{experiment}'",
        f"feature_cache.dir='{feature_cache_dir}'",
        f"hydra.run.dir='{tmp_path / 'outputs'}'",
    ]

    def call(*overrides: str) -> tuple[int | str | None, str]:
        monkeypatch.setattr(sys, "argv", ["transferlab-train", *common, *overrides])
        GlobalHydra.instance().clear()
        try:
            with pytest.raises(SystemExit) as exit:
                main()
        finally:
            GlobalHydra.instance().clear()
        return exit.value.code, capfd.readouterr().err

    return call


def error_lines(stderr: str) -> list[str]:
    """The error as printed, less Hydra's closing hint and blank lines."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(HYDRA_HINT)]


def running_runs(client: MlflowClient) -> list[str]:
    """Every run of the store (all experiments) still RUNNING."""
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found = client.search_runs(ids, "attributes.status = 'RUNNING'", ViewType.ALL)
    return [r.info.run_id for r in found]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_with_one_clear_line_and_leaves_no_run_running(
    case, cli, client, experiment, tmp_path
):
    if case.late:  # its run's artifacts in tmp, not in the store's default folder
        client.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    code, stderr = cli(*case.overrides.split())
    assert code not in (0, None), stderr
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    if case.by_hydra:
        assert case.names[0] in lines[0], stderr  # the override, then Hydra's details
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    message = "\n".join(lines)
    for name in case.names:
        assert name in message, message
    statuses = [r.info.status for r in runs_of(client, experiment)]
    assert statuses == (["FAILED"] if case.late else []), "checked before any run is started"
    assert running_runs(client) == []


def test_every_config_group_and_setting_gets_bad_input():
    overrides = [o for cases in BAD.values() for case in cases for o in case.overrides.split()]
    covered = {o.lstrip("+~").split("=")[0].split(".")[0] for o in overrides}
    set_elsewhere = {"output_dir"}  # by Hydra
    assert set(schema().top_level) - set_elsewhere <= covered
    assert len(CASES) >= 30


@pytest.mark.slow
def test_a_real_process_exits_1_with_the_line_alone_and_records_nothing(tmp_path):
    store = tmp_path / "mlflow.db"
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "transferlab.train",
            "+trainer.max_epoch=3",
            f"tracking.uri=sqlite:///{store}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()  # nothing else: no warnings, no traceback
    assert line.startswith(
        "error: trainer.max_epoch is unknown (did you mean max_epochs?); "
        "pytorch_lightning.Trainer takes "
    )
    assert not store.exists()  # no run, not even a store, before the config is good
