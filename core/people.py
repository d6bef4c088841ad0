"""People, not ids: Label Studio records who annotated as a user id (``completed_by``); team leads read emails.

``AnnotatorDirectory`` turns an id into the user's email (or name, for a user without one), cached in memory. A
webhook must answer Label Studio within a second and before it answers the label must be stored, so that path only
reads the cache (``resolve(..., ask=False)``) and leaves an unknown id to ``name_stored_labels``, run in the
background, which asks Label Studio once and renames the stored labels. Background paths (the reconcile pull) may ask
Label Studio directly, at most once per ``refresh_seconds``. Without a Label Studio connection, or when it fails, the
id is kept: a label is never lost for want of a name.
"""
from __future__ import annotations

import logging
import threading
import time
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

    def resolve(self, annotator: str | None, ask: bool = True) -> str | None:
        """The email (else name) of a Label Studio user id; anything else, or an unknown id, comes back as it was.
        ``ask=False``: from the cache only, never a call to Label Studio."""
        if not is_user_id(annotator):
            return annotator
        with self._lock:
            known = self._names.get(annotator)
            stale = time.monotonic() - self._fetched_at >= self._refresh_seconds
        if known is None and stale and ask:
            self.refresh()
            with self._lock:
                known = self._names.get(annotator)
        return known or annotator

    def name_stored_labels(self, store: Store) -> int:
        """Ask Label Studio for its users and put their names on stored labels that still carry an id."""
        if not self.refresh():
            return 0
        with self._lock:
            names = dict(self._names)
        return store.name_annotators(names)


def is_user_id(annotator: str | None) -> bool:
    return annotator is not None and annotator.isdigit()

