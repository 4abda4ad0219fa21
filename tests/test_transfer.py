"""The embedded default study: real transfer from digits 0-4 to few-shot digits 5-9."""

from __future__ import annotations

from transferlab.train import run


def test_transfer_beats_scratch_and_the_source_run_is_reused(make_config, runs):
    run(make_config("~callbacks.progress_bar", config_name="digits_transfer"))
    first = {r.data.tags["transferlab.role"]: r for r in runs()}
    assert set(first) == {"source", "scratch", "transfer"}
    assert all(r.info.status == "FINISHED" for r in first.values())
    transfer, scratch = first["transfer"].data.metrics, first["scratch"].data.metrics
    assert transfer["test/acc"] > scratch["test/acc"]
    assert transfer["scratch/test/acc"] == scratch["test/acc"]
    assert first["transfer"].data.tags["transferlab.source_run_id"] == first["source"].info.run_id
    assert first["source"].data.params["dataset.classes"] == "[0, 1, 2, 3, 4]"
    assert first["transfer"].data.params["dataset.train_per_class"] == "5"

    run(
        make_config(
            "~callbacks.progress_bar", "compare_scratch=false", config_name="digits_transfer"
        )
    )
    roles = [r.data.tags["transferlab.role"] for r in runs()]
    assert roles.count("source") == 1  # unchanged source config: reused, not retrained
    assert roles.count("transfer") == 2
