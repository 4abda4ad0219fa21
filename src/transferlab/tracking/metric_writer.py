"""Writing a run's metrics without making training wait: a background thread sends them
in batches, keeps them queued while a tracking server is away, and says at the end which
the store refused and which it never took (see tracking.mlflow_run for what becomes of
those).
"""

from __future__ import annotations

import queue
import threading
import time

from mlflow.entities import Metric

from transferlab.tracking.store import MAX_PAUSE, RetryingClient, server_outage


class MetricWriter:
    """Writes one run's metrics from a background thread, at most once per `interval`
    seconds (and when the run ends). A write to a sqlite store costs ~8 ms of Python here
    and Lightning logs three times an epoch: done in line, or on every log call, that was
    ~8 % of a small model's training (bench/tracking_overhead.py). While the tracking
    server is down, metrics stay queued, in order, and are tried again after a growing
    pause; at the end, within the client's wait for the server; those it never took are
    left in `unsent`."""

    MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
    _CLOSE = object()

    def __init__(self, client: RetryingClient, run_id: str, interval: float = 1.0):
        self.client, self.run_id, self.interval = client, run_id, interval
        self.impatient = client.without_waiting()  # mid-run the writer tries again itself
        self.queue: queue.Queue = queue.Queue()
        self.refused: list[str] = []
        self.unsent: list[Metric] = []
        self.thread = threading.Thread(target=self._run, name=f"metrics-{run_id}", daemon=True)
        self.thread.start()

    def put(self, metrics: list[Metric]) -> None:
        self.queue.put(metrics)

    def close(self) -> list[str]:
        """Waits until every queued metric is written, or the server had its wait to come
        back (those left are then in `unsent`); returns what the store refused."""
        if self.thread.is_alive():
            self.queue.put(self._CLOSE)
            self.thread.join()
        return self.refused

    def _run(self) -> None:
        pending: list[Metric] = []
        due = None  # when the pending metrics are written next
        pause = self.interval  # grows while the server is down
        while True:
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = []  # the interval or the pause is over
            if item is self._CLOSE:
                self.unsent = self._write(pending, self.client)
                return
            pending += item
            due = due or time.monotonic() + self.interval
            full = len(pending) >= self.MAX_BATCH and pause == self.interval  # and server up
            if full or time.monotonic() >= due:
                pending = self._write(pending, self.impatient)
                pause = min(2 * pause, MAX_PAUSE) if pending else self.interval
                due = time.monotonic() + pause if pending else None

    def _write(self, metrics: list[Metric], client: RetryingClient) -> list[Metric]:
        """Writes in batches; returns the metrics left unwritten as the server is down."""
        for start in range(0, len(metrics), self.MAX_BATCH):
            batch = metrics[start : start + self.MAX_BATCH]
            try:
                client.log_batch(self.run_id, metrics=batch)
            except Exception as error:
                if server_outage(error) is not None:
                    return metrics[start:]
                left = self._write_each(batch, client)  # one bad metric fails the batch
                if left:
                    return left + metrics[start + self.MAX_BATCH :]
        return []

    def _write_each(self, batch: list[Metric], client: RetryingClient) -> list[Metric]:
        for index, metric in enumerate(batch):
            try:
                client.log_batch(self.run_id, metrics=[metric])
            except Exception as error:  # kept for close(): nothing is dropped silently
                if server_outage(error) is not None:
                    return batch[index:]
                reason = str(error).partition("\n")[0]
                self.refused.append(f"{metric.key} (step {metric.step}): {reason}")
        return []
