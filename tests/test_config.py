"""Config composition and validation: clear one-line errors, before anything heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import initialize_config_module
from hydra.errors import ConfigCompositionException

from tests.conftest import PYTHON
from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.train import main

HEAVY = ("torch", "pytorch_lightning", "mlflow")
PROBE = """
import sys
sys.argv = ["transferlab-train", *{args!r}]
from transferlab.train import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print("HEAVY:", [m for m in {heavy!r} if m in sys.modules], "EXIT:", code)
"""


def run_app(tmp_path, *args: str) -> subprocess.CompletedProcess:
    code = PROBE.format(args=list(args), heavy=HEAVY)
    return subprocess.run(
        [PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_group_and_imports_nothing_heavy(tmp_path):
    result = run_app(tmp_path, "--help")
    assert "HEAVY: [] EXIT: 0" in result.stdout
    for group, option in [
        ("backbone", "vit_b_16"),
        ("dataset", "image_folder"),
        ("freeze", "linear_probe"),
        ("optimizer", "adamw"),
        ("scheduler", "plateau"),
        ("trainer", "ddp"),
    ]:
        line = next(ln for ln in result.stdout.splitlines() if ln.startswith(f"{group}:"))
        assert option in line


def test_cfg_job_and_config_errors_import_nothing_heavy(tmp_path):
    shown = run_app(tmp_path, "--cfg", "job", "backbone=resnet18")
    assert "arch: resnet18" in shown.stdout
    assert "HEAVY: []" in shown.stdout
    bad = run_app(tmp_path, "optimizer.lr=-1")
    assert "HEAVY: []" in bad.stdout
    assert "EXIT: 1" in bad.stdout
    assert bad.stderr.strip() == "error: optimizer.lr=-1 must be > 0"
    assert "Traceback" not in bad.stderr


def test_unknown_group_option_names_the_accepted_ones(make_config):
    with pytest.raises(ConfigCompositionException) as error:
        make_config("backbone=resnet999")
    message = str(error.value)
    assert "resnet999" in message
    assert "Available options in 'backbone'" in message or "resnet18" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=0", "optimizer.lr=0 must be > 0"),
        ("optimizer.lr=abc", "optimizer.lr='abc' must be a number"),
        ("loader.batch_size=0", "loader.batch_size=0 must be > 0"),
        ("loader.batch_size=2.5", "loader.batch_size=2.5 must be a whole number"),
        ("trainer.max_epochs=-3", "trainer.max_epochs=-3 must be > 0"),
        (
            "loader.num_workers=-1",
            "loader.num_workers=-1 must be a whole number in [0, 256], or auto",
        ),
        ("loader.num_workers=many", "loader.num_workers='many' must be a whole number in [0, 256]"),
        (
            "+freeze.name=sideways",
            "freeze.name has moved: use freeze=<option> or freeze._target_",
        ),
        ("freeze=partial freeze.k=-1", "freeze.k=-1 must be a whole number >= 0"),
        ("+freeze.k=2", "freeze.k is unknown; transferlab.finetune.freezing.FullFineTune takes"),
        (
            "dataset.task.train_per_class=0",
            "dataset.task.train_per_class=0 must be a whole number >= 1",
        ),
        ("dataset.task.val_fraction=1.5", "dataset.task.val_fraction=1.5 must be in [0, 1)"),
        ("dataset=image_folder", "dataset.root is required: pass dataset.root=/path/to/images"),
        ("head.dropout=1.0", "head.dropout=1.0 must be in [0, 1)"),
        ("head.dropout=nan", "head.dropout=nan must be a finite number"),
        ("optimizer.lr=inf", "optimizer.lr=inf must be a finite number"),
        ("loader.batch_size=2000000", "loader.batch_size=2000000 must be <= 1048576"),
    ],
)
def test_bad_values_get_one_clear_line(make_config, override, expected):
    cfg = make_config(*override.split())
    with pytest.raises(UserError) as error:
        validate(cfg)
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


# --- transferlab's own keys in their own nodes; options that extend a base ------------------

MOVED_TO_OWN_NODES = {
    "optimizer.backbone_lr_mult": "optimizer.param_groups.backbone_lr_mult",
    "optimizer.layer_decay": "optimizer.param_groups.layer_decay",
    "optimizer.decay_bias_and_norm": "optimizer.param_groups.decay_bias_and_norm",
    "scheduler.monitor": "scheduler.lightning.monitor",
    "trainer.channels_last": "trainer.gpu.channels_last",
    "trainer.compile": "trainer.gpu.compile",
    "dataset.classes": "dataset.task.classes",
    "dataset.train_per_class": "dataset.task.train_per_class",
    "dataset.val_fraction": "dataset.task.val_fraction",
    "dataset.test_fraction": "dataset.task.test_fraction",
    "dataset.split_seed": "dataset.task.split_seed",
}


def refusal(monkeypatch, capsys, *argv: str) -> str:
    """What `transferlab-train ARGV` says on stderr when it refuses the command line."""
    monkeypatch.setattr(sys, "argv", ["transferlab-train", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(("old", "new"), MOVED_TO_OWN_NODES.items())
def test_a_moved_key_is_refused_naming_its_new_path(make_config, monkeypatch, capsys, old, new):
    # on the command line, where Hydra alone would only say the key is not in the config
    assert refusal(monkeypatch, capsys, f"{old}=1") == f"error: {old} has moved: use {new}\n"
    with pytest.raises(UserError) as error:  # added with `+`, or in a config file
        validate(make_config(f"+{old}=1"))
    assert str(error.value) == f"{old} has moved: use {new}"


def test_a_moved_key_in_a_stage_overlay_is_refused_naming_its_new_path(monkeypatch, capsys):
    said = refusal(monkeypatch, capsys, "source=digits_0_4", "source.dataset.classes=[1,2]")
    assert said == "error: source.dataset.classes has moved: use source.dataset.task.classes\n"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "+dataset.task.split_sed=1",
            "dataset.task.split_sed is unknown (did you mean split_seed?); dataset.task takes "
            "classes, train_per_class, val_fraction, test_fraction, split_seed or label_noise",
        ),
        (
            "+optimizer.param_groups.layer_decy=0.5",
            "optimizer.param_groups.layer_decy is unknown (did you mean layer_decay?); "
            "optimizer.param_groups takes backbone_lr_mult, layer_decay or decay_bias_and_norm",
        ),
        (
            "scheduler=plateau +scheduler.lightning.monitr=val/acc",
            "scheduler.lightning.monitr is unknown (did you mean monitor?); "
            "scheduler.lightning takes monitor",
        ),
        (
            "+trainer.gpu.chanels_last=true",
            "trainer.gpu.chanels_last is unknown (did you mean channels_last?); trainer.gpu "
            "takes channels_last or compile",
        ),
        (
            "dataset.task=5",
            "dataset.task=5 must hold keys: classes, train_per_class, val_fraction, "
            "test_fraction, split_seed or label_noise",
        ),
        ("optimizer.param_groups.decay_bias_and_norm=yes", "must be true or false"),
    ],
)
def test_an_own_node_takes_only_its_keys(make_config, override, expected):
    with pytest.raises(UserError) as error:
        validate(make_config(*override.split()))
    assert str(error.value).endswith(expected)


def test_libraries_get_exactly_their_arguments_and_own_nodes_take_effect(make_config):
    """Each own node is taken off before its library is called, and still does its work."""
    from transferlab.builders import build_backbone_and_data, build_module
    from transferlab.gpu_options import trainer_arguments

    cfg = make_config(
        "scheduler=plateau",
        "optimizer.lr=0.1",
        "optimizer.param_groups.backbone_lr_mult=0.5",
        "optimizer.param_groups.layer_decay=0.5",
        "dataset.task.classes=[3,4,5]",
        "trainer.gpu.channels_last=true",
    )
    validate(cfg)
    backbone, data = build_backbone_and_data(cfg)
    assert data.class_names == ["3", "4", "5"] and "task" not in data.source_config
    optimizers = build_module(cfg, backbone, data.num_classes).configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]
    rates = {group["stage"]: group["lr"] for group in optimizer.param_groups}
    last = backbone.num_stages - 1  # next to the head: lr x 0.5 x 0.5
    assert rates[None] == 0.1 and rates[last] == pytest.approx(0.025)
    assert scheduler["monitor"] == "val/loss"
    arguments, options = trainer_arguments(cfg.trainer)
    assert "gpu" not in arguments and options == {"channels_last": True, "compile": False}


TORCHVISION_BACKBONES = (
    "convnext_tiny efficientnet_b0 mobilenet_v3_small resnet18 resnet50 vgg16 vgg19 vit_b_16"
)


def test_options_extend_their_base_and_bases_are_no_choices(make_config):
    """Each torchvision backbone sets its `arch` only; every dataset gets the base's task
    (digits changes one key of it); every trainer the base's keys, every optimizer the base's
    param_groups; no base is an option."""
    from hydra.core.global_hydra import GlobalHydra

    for arch in TORCHVISION_BACKBONES.split():
        backbone = make_config(f"backbone={arch}").backbone
        assert backbone.arch == arch and backbone.weights == "IMAGENET1K_V1"
        assert backbone._target_ == "transferlab.models.backbones.build_backbone"
    tasks = {name: make_config(f"dataset={name}").dataset.task for name in ("synthetic", "digits")}
    assert tasks["synthetic"].test_fraction == 0.2 and tasks["digits"].test_fraction == 0.3
    assert tasks["synthetic"].keys() == tasks["digits"].keys()
    for trainer in ("cpu", "gpu", "ddp"):
        node = make_config(f"trainer={trainer}").trainer
        assert node._target_ == "pytorch_lightning.Trainer" and node.max_epochs == 60
    for optimizer in ("adam", "adamw", "sgd"):
        node = make_config(f"optimizer={optimizer}").optimizer
        assert node.param_groups == {
            "backbone_lr_mult": 1.0,
            "layer_decay": None,
            "decay_bias_and_norm": False,
        }
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = loader.list_groups("")
        options = {group: loader.get_group_options(group) for group in groups}
    assert not [g for g in groups if "base" in g]
    assert not [o for group in options.values() for o in group if "base" in o]
    assert options["backbone"] == sorted(
        [*TORCHVISION_BACKBONES.split(), "small_cnn", "timm", "vit_tiny_p4"]
    )
