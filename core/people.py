"""People, not ids: Label Studio records who annotated as a user id (``completed_by``); team leads read emails.

``AnnotatorDirectory.resolve`` turns an id into the user's email (or name, for a user without one), cached in
memory. An id it has not seen makes it ask Label Studio again, at most once per ``refresh_seconds``, so a webhook
from a new annotator is named after one quick call and a flood of unknown ids costs one call, not one each.
Without a Label Studio connection, or when it fails, the id is kept: a label is never lost for want of a name.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from core.label_studio import LabelStudioClient, LabelStudioRejected, LabelStudioUnavailable
from core.store import Store

log = logging.getLogger(__name__)


class AnnotatorDirectory:
    def __init__(self, client: Callable[[], LabelStudioClient | None], refresh_seconds: float = 60.0):
        self._client = client
        self._refresh_seconds = refresh_seconds
        self._names: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Read every user from Label Studio now; False when there is no connection or it failed."""
        client = self._client()
        if client is None:
            return False
        with self._lock:
            self._fetched_at = time.monotonic()
        try:
            users = client.users()
        except (LabelStudioUnavailable, LabelStudioRejected) as exc:
            log.warning("cannot read Label Studio's users; annotators stay ids for now: %s", exc)
            return False
        names = {str(u["id"]): u["email"] or u["name"] for u in users if u["email"] or u["name"]}
        with self._lock:
            self._names = names
        return True

    def resolve(self, annotator: str | None) -> str | None:
        """The email (else name) of a Label Studio user id; anything else, or an unknown id, comes back as it was."""
        if annotator is None or not annotator.isdigit():
            return annotator
        with self._lock:
            known = self._names.get(annotator)
            stale = time.monotonic() - self._fetched_at >= self._refresh_seconds
        if known is None and stale:
            self.refresh()
            with self._lock:
                known = self._names.get(annotator)
        return known or annotator


def labels_per_annotator(store: Store) -> dict[str, int]:
    """How many gold labels each annotator gave, most first (for /status)."""
    return dict(Counter(label.annotator or "unknown" for label in store.labels()).most_common())
