"""Concurrent /predict calls share one model: their tickets are merged into batches and run one at a time.

A GPU runs one forward pass well and two at once badly (and may run out of memory), so threads do not call the
model directly: they queue their tickets, one worker takes everything waiting (up to a batch), runs it, and hands
each caller its rows back.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from queue import Empty, Queue

import numpy as np

from core.classifier import Classifier, Distribution

_CLOSE = None  # queued by close(): the worker answers what is ahead of it, then ends


class ClassifierClosed(RuntimeError):
    """predict_proba on a classifier that was swapped out and closed."""


class BatchingClassifier:
    def __init__(self, inner: Classifier, max_batch: int):
        self.inner = inner
        self.version = inner.version
        self.departments = inner.departments
        self.max_batch = max_batch
        self._queue: Queue = Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"batcher-{inner.version}", daemon=True)
        self._worker.start()

    def predict_proba(self, texts: Sequence[str]) -> Distribution:
        if self._closed:
            raise ClassifierClosed(f"{self.version} was replaced; ask the serving model")
        future: Future = Future()
        self._queue.put((list(texts), future))
        return future.result()

    def close(self) -> None:
        """Stop the worker thread once the requests already queued are answered, and let go of the model."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _CLOSE:
                self.inner = None  # the scorer and its cached prompt prefix can now be freed
                return
            waiting = [first]
            size = len(waiting[0][0])
            while size < self.max_batch:
                try:
                    request = self._queue.get_nowait()
                except Empty:
                    break
                if request is _CLOSE:
                    self._queue.put(_CLOSE)  # answer what was taken first, then stop
                    break
                waiting.append(request)
                size += len(request[0])
            texts = [t for request, _ in waiting for t in request]
            try:
                result = self.inner.predict_proba(texts)
            except Exception as exc:  # every caller gets the error; the worker keeps serving
                for _, future in waiting:
                    future.set_exception(exc)
                continue
            start = 0
            for request, future in waiting:
                end = start + len(request)
                future.set_result(Distribution(probs=result.probs[start:end], truncated=np.asarray(result.truncated)[start:end]))
                start = end
