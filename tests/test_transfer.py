"""The embedded default study: real transfer from digits 0-4 to few-shot digits 5-9, against
a scratch baseline trained by the same rule (early stopping under a generous cap)."""

from __future__ import annotations

from transferlab.train import run


def _first_epoch_val_acc(client, run_) -> float:
    history = client.get_metric_history(run_.info.run_id, "val/acc")
    return min(history, key=lambda m: m.step).value


def test_transfer_starts_ahead_of_a_fair_scratch_baseline_and_the_source_is_reused(
    make_config, runs, client
):
    run(make_config("~callbacks.progress_bar", config_name="digits_transfer"))
    first = {r.data.tags["transferlab.role"]: r for r in runs()}
    assert set(first) == {"source", "scratch", "transfer"}
    assert all(r.info.status == "FINISHED" for r in first.values())
    transfer, scratch, source = first["transfer"], first["scratch"], first["source"]
    # what transfer does: after one epoch of 3 steps the transferred network is far ahead
    assert _first_epoch_val_acc(client, transfer) > _first_epoch_val_acc(client, scratch) + 0.2
    assert transfer.data.metrics["scratch/test/acc"] == scratch.data.metrics["test/acc"]
    # the baseline had its own budget, recorded, and early stopping ended it before the cap
    assert scratch.data.params["trainer.max_epochs"] == "200"
    assert len(client.get_metric_history(scratch.info.run_id, "val/loss")) < 200
    # the source stage's schedule spans its own 15 epochs, not the target's
    assert source.data.params["scheduler.T_max"] == source.data.params["trainer.max_epochs"]
    assert transfer.data.tags["transferlab.source_run_id"] == source.info.run_id
    assert source.data.params["dataset.task.classes"] == "[0, 1, 2, 3, 4]"
    assert transfer.data.params["dataset.task.train_per_class"] == "5"

    run(
        make_config(
            "~callbacks.progress_bar", "compare_scratch=false", config_name="digits_transfer"
        )
    )
    roles = [r.data.tags["transferlab.role"] for r in runs()]
    assert roles.count("source") == 1  # unchanged source config: reused, not retrained
    assert roles.count("transfer") == 2
