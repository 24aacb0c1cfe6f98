"""One background thread that runs the ingestor's flushes in order, so consuming the next batch overlaps
with writing the last one (delta-rs writes Parquet without holding the GIL).

At most one flush runs and one waits; ``submit`` blocks beyond that (back-pressure). Flushes run strictly
in submission order, so the offsets in the Delta log only move forward. The first error stops the writer;
``submit``/``drain`` re-raise it in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]


class BackgroundWriter:
    def __init__(self, name: str = "lakeloop-writer", *, max_waiting: int = 1) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_waiting)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
            finally:
                self._jobs.task_done()

    def submit(self, job: Job) -> None:
        self.raise_error()
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted flush has finished; re-raise the first error."""
        self._jobs.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    @property
    def failed(self) -> bool:
        return self._error is not None

    def close(self) -> None:
        self._jobs.join()
        self._jobs.put(None)
        self._thread.join(timeout=30)
