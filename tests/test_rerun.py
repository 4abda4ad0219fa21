"""Rerun: a finished run again from what MLflow recorded, with the same final metrics."""

from __future__ import annotations

import pytest

from transferlab.errors import UserError
from transferlab.rerun import main, rerun


def test_rerun_matches_exactly_and_links_to_the_original(train, runs, tracking_uri, tmp_path):
    train("freeze=partial", "freeze.k=1", "optimizer=sgd", "seed=5")
    (original,) = runs()
    assert rerun(original.info.run_id, tracking_uri, str(tmp_path / "rerun"))
    again = next(r for r in runs() if r.info.run_id != original.info.run_id)
    assert again.data.tags["transferlab.rerun_of"] == original.info.run_id
    assert again.data.params == original.data.params
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert again.data.metrics[key] == original.data.metrics[key]


def test_rerun_of_a_transfer_run_reuses_its_source(make_config, runs, tracking_uri, tmp_path):
    from transferlab.train import run

    run(make_config("~callbacks.progress_bar", "compare_scratch=false",
                    "trainer.max_epochs=2", config_name="digits_transfer"))  # fmt: skip
    transfer = next(r for r in runs() if r.data.tags["transferlab.role"] == "transfer")
    assert rerun(transfer.info.run_id, tracking_uri, str(tmp_path / "rerun"))
    roles = sorted(r.data.tags["transferlab.role"] for r in runs())
    assert roles == ["source", "transfer", "transfer"]


def test_rerun_of_an_unknown_run_is_one_clear_line(tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["0" * 32, "--tracking-uri", tracking_uri])
    assert exit_code.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: cannot rerun {'0' * 32}")
    with pytest.raises(UserError):
        rerun("nope", tracking_uri)


def test_a_rerun_compares_only_the_params_that_change_a_result(capsys):
    from transferlab.rerun import changed_params

    original = {"optimizer.lr": "0.001", "tracking.uri": "sqlite:///a.db", "seed": "1"}
    moved = {"optimizer.lr": "0.001", "tracking.uri": "sqlite:///b.db", "seed": "1"}
    assert changed_params(original, moved) == []  # another store changes no result
    assert changed_params(original, {**moved, "optimizer.lr": "0.01"}) == ["optimizer.lr"]
    assert "config optimizer.lr: 0.001 -> 0.01  DIFFERS" in capsys.readouterr().out
