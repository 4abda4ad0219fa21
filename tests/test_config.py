"""Config composition and validation: clear one-line errors, before anything heavy."""

from __future__ import annotations

import subprocess

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import PYTHON
from transferlab.config import validate
from transferlab.errors import UserError

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
            "freeze.name=sideways",
            "freeze.name='sideways' is unknown; use none, linear_probe, partial, "
            "freeze_unfreeze or gradual",
        ),
        ("freeze=partial freeze.k=-1", "freeze.k=-1 must be a whole number >= 0"),
        ("+freeze.k=2", "freeze=none does not take k"),
        ("dataset.train_per_class=0", "dataset.train_per_class=0 must be a whole number >= 1"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction=1.5 must be in [0, 1)"),
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
