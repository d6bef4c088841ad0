"""What annotators see of the backend's work in Label Studio, besides the preselected suggestion.

* **The suggestion row.** Label Studio shows per-task choices only from the task's data (``<Choice
  value="$suggestion_1"/>``...), so before a task's prediction is pushed its data gets the top-k departments and
  their probabilities, the top department as plain text (``suggested_department``) and its place in the queue
  (``queue_priority``).
* **The queue tab.** When the backend connects to a project it adds, once, a data-manager tab that shows the ticket,
  the suggested department, the score (the model's probability for it) and the model version, ordered by
  ``queue_priority`` ascending. "Label All Tasks" from that tab serves tasks in the tab's order.

The order is a task field rather than the prediction score so that the score keeps meaning "how sure the model is"
to annotators while the active-learning strategy decides the order: ``priority`` is any function of a
``TicketPrediction`` (lower is served first). The default, least confidence, is the score itself: the same order as
Label Studio's own uncertainty sampling.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from annotation_config.labeling_config import PROBABILITIES_FIELD, QUEUE_TAB_TITLE
from core.classifier import TicketPrediction
from core.label_studio import LabelStudioClient, LabelStudioRejected, LabelStudioUnavailable
from core.labeling import LabelSpace

log = logging.getLogger(__name__)

SUGGESTED_FIELD = "suggested_department"
PRIORITY_FIELD = "queue_priority"
# Built-in columns the tab shows; every other column the project has is hidden.
SHOWN_COLUMNS = ("tasks:id", "tasks:predictions_score", "tasks:predictions_model_versions", "tasks:total_annotations",
                 "tasks:annotators")


def least_confidence(prediction: TicketPrediction) -> float:
    return prediction.score


class AnnotatorView:
    def __init__(self, client: Callable[[], LabelStudioClient | None], priority: Callable[[TicketPrediction], float] = least_confidence):
        self._client = client
        self.priority = priority
        self._tabs_checked: set[int] = set()
        self._tab_lock = threading.Lock()  # /setup and a pre-annotation may both look for the tab at once

    def task_data(self, space: LabelSpace, data: dict, prediction: TicketPrediction) -> dict:
        """The task's data with the suggestion row, the suggested department and the queue priority."""
        return {**data, **space.suggestion_fields(prediction.top), SUGGESTED_FIELD: prediction.department,
                PRIORITY_FIELD: round(self.priority(prediction), 6)}

    def publish(self, space: LabelSpace, tasks: list[dict], predictions: list[TicketPrediction]) -> list[dict]:
        """Write each task's suggestions into its data in Label Studio; returns the data as written."""
        client = self._client()
        written = []
        for task, prediction in zip(tasks, predictions):
            data = self.task_data(space, task["data"], prediction)
            if data != task["data"]:
                client.update_task_data(task["id"], data)
            written.append(data)
        return written

    def ensure_queue_tab(self, project_id: int, space: LabelSpace) -> int | None:
        """The id of the project's queue tab, created if it is missing; other tabs are never touched."""
        client = self._client()
        if client is None:
            return None
        with self._tab_lock:
            return self._find_or_create_tab(client, project_id, space)

    def _find_or_create_tab(self, client: LabelStudioClient, project_id: int, space: LabelSpace) -> int | None:
        try:
            for view in client.views(project_id):
                if (view.get("data") or {}).get("title") == QUEUE_TAB_TITLE:
                    self._tabs_checked.add(project_id)
                    return view["id"]
            view = client.create_view(project_id, queue_tab(space, client.columns(project_id)))
        except (LabelStudioUnavailable, LabelStudioRejected) as exc:
            log.warning("could not add the queue tab to project %d: %s", project_id, exc)
            return None
        self._tabs_checked.add(project_id)
        log.info("project %d: added the data-manager tab %r (tab %s)", project_id, QUEUE_TAB_TITLE, view.get("id"))
        return view.get("id")

    def connected(self, project_id: int, space: LabelSpace, submit: Callable[[str, Callable[[], object]], object]) -> None:
        """Label Studio connected to the project (/setup, which must answer within 3 s): add its tab in the
        background, once per process."""
        if project_id not in self._tabs_checked:
            submit(f"queue-tab-{project_id}", lambda: self.ensure_queue_tab(project_id, space))


def queue_tab(space: LabelSpace, columns: list[str]) -> dict:
    """A data-manager tab (Label Studio "view") ordered by queue priority, showing what an annotator needs."""
    shown = {f"tasks:data.{space.data_key}", f"tasks:data.{SUGGESTED_FIELD}", f"tasks:data.{PRIORITY_FIELD}", *SHOWN_COLUMNS}
    hidden = sorted({*columns, *(f"tasks:data.{key}" for key in (*space.suggestion_keys, PROBABILITIES_FIELD))} - shown)
    labeling_shown = {f"tasks:data.{space.data_key}", f"tasks:data.{SUGGESTED_FIELD}", "tasks:predictions_score"}
    return {
        "title": QUEUE_TAB_TITLE,
        "ordering": [f"tasks:data.{PRIORITY_FIELD}"],
        "filters": {"conjunction": "and", "items": []},
        "hiddenColumns": {"explore": hidden, "labeling": sorted(set(hidden) | (shown - labeling_shown))},
    }
