"""Cross-request face batching: faces of concurrent requests share one forward pass.

A classifier's cost per call has a large fixed part on a CPU, so `workers` threads each take
a waiting job, collect more for up to `window_s` (or until `max_faces`), classify them all in
one call and hand each job its rows back. With one request at a time there is nothing to wait
for (`expected()` says how many requests are in the server) and a job goes through at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BatchInfo:
    """How a job was classified: with how many other requests, how many faces, how long."""

    requests: int
    faces: int
    queue_ms: float  # from submission until its batch started
    model_ms: float


@dataclass
class _Job:
    faces: np.ndarray
    submitted: float
    future: Future = field(default_factory=Future)


class FaceBatcher:
    """Bounded pool of model threads classifying uint8 face batches in shared calls."""

    def __init__(
        self,
        classify: Callable[[np.ndarray], np.ndarray],
        *,
        workers: int = 1,
        window_s: float = 0.005,
        max_faces: int = 64,
        expected: Callable[[], int] | None = None,
    ) -> None:
        self._classify = classify
        self.window_s = window_s
        self.max_faces = max_faces
        self._expected = expected
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # requests per batch -> how many batches
        self._threads = [
            threading.Thread(target=self._work, name=f"qcsfer-model-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, faces: np.ndarray) -> Future:
        """Future of (`classify`'s rows for `faces`, BatchInfo); cancel it to drop the job."""
        job = _Job(faces, time.perf_counter())
        self._jobs.put(job)
        return job.future

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet taken by a model thread."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Stop the threads once the jobs already submitted are done."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        carry: _Job | None = None  # already marked running by _collect
        while True:
            first, carry = (carry, None) if carry is not None else (self._jobs.get(), None)
            if first is None:
                return
            if not first.future.running() and not first.future.set_running_or_notify_cancel():
                continue  # timed out or abandoned while waiting
            group, stop = [first], False
            if self.window_s > 0:
                carry, stop = self._collect(group)
            self._run(group)
            if stop:
                return

    def _collect(self, group: list[_Job]) -> tuple[_Job | None, bool]:
        """Add waiting jobs to `group` for up to the window; returns (a job for the next
        batch, whether to stop afterwards)."""
        faces = len(group[0].faces)
        deadline = time.perf_counter() + self.window_s
        while faces < self.max_faces:
            remaining = deadline - time.perf_counter()
            if self._expected is not None and self._expected() <= len(group):
                remaining = 0.0  # nobody else is coming: take only what is already queued
            try:
                job = (
                    self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
                )
            except queue.Empty:
                return None, False
            if job is None:
                return None, True
            if not job.future.set_running_or_notify_cancel():
                continue
            if faces + len(job.faces) > self.max_faces:
                return job, False  # starts the next batch (already marked running)
            group.append(job)
            faces += len(job.faces)
        return None, False

    def _run(self, group: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            outputs = self._classify(np.concatenate([job.faces for job in group]))
        except Exception as exc:  # handed to every waiting request, which reports it
            for job in group:
                job.future.set_exception(exc)
            return
        model_ms = (time.perf_counter() - start) * 1000
        with self._lock:
            self.batch_sizes[len(group)] += 1
        faces = sum(len(job.faces) for job in group)
        row = 0
        for job in group:
            info = BatchInfo(len(group), faces, (start - job.submitted) * 1000, model_ms)
            job.future.set_result((outputs[row : row + len(job.faces)], info))
            row += len(job.faces)
