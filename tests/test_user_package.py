"""The README's walkthrough, "Adding a method: a regulariser in one module and one YAML", done
from a user's own package: a module in `my_lab/` on the Python path and a YAML in `my_conf/`
on Hydra's search path, nothing edited inside transferlab."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from transferlab.errors import UserError

MODULE = '''
import torch
from torch import nn

from transferlab.components import number


class HeadNorm(nn.Module):
    """weight * the squared norm of the head's weight matrices: a user's own regulariser."""

    def __init__(self, backbone, head: nn.Module, weight: float = 1.0):
        super().__init__()
        self.check_options(weight=weight)
        self.weight = weight
        self.matrices = [p for p in head.parameters() if p.ndim > 1]

    @staticmethod
    def check_options(weight: float) -> None:
        number("weight", weight, strict=True)

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.weight * sum(p.pow(2).sum() for p in self.matrices)
'''

YAML = """\
# A penalty on the size of the new head's weights
_target_: my_lab.head_norm.HeadNorm
weight: 1.0
"""


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch) -> Iterator[str]:
    """Writes my_lab/ and my_conf/regularizer/head_norm.yaml; returns the search path
    override. my_lab is forgotten afterwards, so no later test imports it by accident."""
    package = tmp_path / "my_lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "head_norm.py").write_text(MODULE)
    configs = tmp_path / "my_conf" / "regularizer"
    configs.mkdir(parents=True)
    (configs / "head_norm.yaml").write_text(YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    for name in [n for n in sys.modules if n == "my_lab" or n.startswith("my_lab.")]:
        del sys.modules[name]


def head_norm(client, run, tmp_path: Path) -> float:
    """The norm of the head's weight matrix in the run's best checkpoint artifact."""
    folder = tmp_path / run.info.run_id
    best = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(folder))
    state = torch.load(best, weights_only=True)["state_dict"]
    return state["head.linear.weight"].norm().item()


def test_a_users_regulariser_from_their_own_package_trains_and_logs(
    user_package, train, runs, client, tmp_path
):
    train(user_package, "regularizer=none")
    train(user_package, "regularizer=head_norm", "regularizer.weight=1.0")
    plain, penalised = runs()
    assert plain.info.status == penalised.info.status == "FINISHED"
    assert penalised.data.params["regularizer._target_"] == "my_lab.head_norm.HeadNorm"
    assert penalised.data.metrics["train/reg"] > 0
    assert "train/reg" not in plain.data.metrics
    assert head_norm(client, penalised, tmp_path) < 0.8 * head_norm(client, plain, tmp_path)


def test_a_users_regulariser_checks_its_own_options_before_any_run(user_package, train, runs):
    with pytest.raises(UserError) as error:
        train(user_package, "regularizer=head_norm", "regularizer.weight=0")
    assert str(error.value) == "regularizer.weight=0 must be > 0"
    assert runs() == []
