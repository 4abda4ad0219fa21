"""`make bench`: every benchmark in one process; a table, and bench/results/latest.json
(a list of records: case, metric, transferlab, baseline, ratio). Timings are measured
here, never asserted by tests."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import data_loading
import feature_cache
import memory
import peft_step
import per_trial
import startup
import throughput
import torch
import tracking_overhead
import transferability

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    records = [
        *throughput.records(),
        *startup.records(),
        *per_trial.records(),
        *memory.records(),
        *tracking_overhead.records(),
        *feature_cache.records(),
        *data_loading.records(),
        *transferability.records(),
        *peft_step.records(),
    ]
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for record in records:
        record["machine"] = machine
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(records, indent=2))
    print(f"\n| case | metric | transferlab | baseline | ratio |  ({machine})")
    print("|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['case']} | {r['metric']} | {r['transferlab']} | {r['baseline']} | {r['ratio']} |"
        )


if __name__ == "__main__":
    main()
