"""What annotators see of the backend's work in Label Studio, besides the preselected suggestion.

* **The suggestion row.** Label Studio shows per-task choices only from the task's data (``<Choice
  value="$suggestion_1"/>``...), so before a task's prediction is pushed its data gets the top-k departments and
  their probabilities, the top department as plain text (``suggested_department``) and its place in the queue
  (``queue_priority``).
* **The queue tab.** When the backend connects to a project it adds, once, a data-manager tab that shows the ticket,
  the suggested department, the score (the model's probability for it) and the model version, ordered by
  ``queue_priority`` ascending. "Label All Tasks" from that tab serves tasks in the tab's order.

The order is a task field rather than the prediction score so that the score keeps meaning "how sure the model is"
to annotators while the active-learning strategy decides the order. The default is the replay's default strategy
(``learning.strategies.DEFAULT``): while the project's model is young, TypiClust's order over the project's waiting
tickets (``young_places``: typical tickets of the regions its gold labels do not cover yet, computed once per
pre-annotation, which the service repeats every QUEUE_REORDER_EVERY_N_LABELS new gold labels), because margin
sampling trails random order at small budgets; once the model is mature, margin
sampling (the gap between the two most likely departments, smallest first). A ticket the young order did not place
(it arrived after the pre-annotation began) goes after the placed ones, in a shuffle that stays put (a hash of its
id). Label Studio's own uncertainty sampling orders by the score (least confidence). Another order plugs in as
``priority``: any function of a ``TicketPrediction``, lower served first.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from annotation_config.labeling_config import PROBABILITIES_FIELD, QUEUE_TAB_TITLE
from core.classifier import TicketPrediction
from core.label_studio import LabelStudioClient, LabelStudioRejected, LabelStudioUnavailable
from core.labeling import LabelSpace
from core.routing import AUDIT, REVIEW
from learning.strategies import DEFAULT, Pool, mature, strategy

log = logging.getLogger(__name__)

# Label Studio 1.23 has no bulk update of task data, and answers one PATCH in about 200 ms, most of it its own CPU
# (4.6 tasks/s pre-annotated one at a time, bench/preannotate.py): a few at once keep its threaded server busy.
PUBLISH_THREADS = 4

SUGGESTED_FIELD = "suggested_department"
PRIORITY_FIELD = "queue_priority"
# Built-in columns the tab shows; every other column the project has is hidden.
SHOWN_COLUMNS = ("tasks:id", "tasks:predictions_score", "tasks:predictions_model_versions", "tasks:total_annotations",
                 "tasks:annotators")
# Routed tickets (backend/router.py): data.route says why a person sees the task, data.route_ticket is the hotline's id.
ROUTE_FIELD = "route"
ROUTE_TICKET_FIELD = "route_ticket"
ROUTE_TABS = {REVIEW: "需要人工 Needs a person", AUDIT: "自动分派抽检 Auto-routed, for audit"}


def least_confidence(prediction: TicketPrediction) -> float:
    return prediction.score


def margin(prediction: TicketPrediction) -> float:
    return prediction.margin


def shuffled(task_id: int) -> float:
    """A place in [0, 1) that looks random but is the task's own, so a re-run of the pre-annotation keeps the order."""
    return int.from_bytes(hashlib.blake2b(str(task_id).encode(), digest_size=8).digest()) / 2**64


class AnnotatorView:
    def __init__(self, client: Callable[[], LabelStudioClient | None], priority: Callable[[TicketPrediction], float] | None = None):
        self._client = client
        self.priority = priority  # None: the default order (module docstring)
        self._tabs: dict[tuple[int, str], int | None] = {}  # (project, title) -> tab id, once found or made
        self._tab_lock = threading.Lock()  # /setup and a pre-annotation may both look for a tab at once

    def young_places(self, task_ids: Sequence[int], texts: Sequence[str], labelled: Sequence[str], departments: int) -> dict[int, float]:
        """The waiting tasks' places in [0, 1) in the default strategy's young order (``first``: TypiClust's), for a
        project whose gold labels have the texts `labelled`; nothing once the model is mature or another order
        was plugged in."""
        if self.priority is not None or mature(len(labelled), departments) or not task_ids:
            return {}
        ids, texts = zip(*sorted(zip(task_ids, texts)))  # in id order: the same tasks give the same order, however listed
        order = strategy(DEFAULT).first(Pool(texts, labelled), departments)
        return {ids[i]: place / len(order) for place, i in enumerate(order)}

    def queue_priority(self, prediction: TicketPrediction, task_id: int, labelled: int, departments: int,
                       places: Mapping[int, float] | None = None) -> float:
        """The task's place in the queue tab while its project has `labelled` gold labels (`places`: the young order)."""
        if self.priority is not None:
            return self.priority(prediction)
        if mature(labelled, departments):
            return margin(prediction)
        return places[task_id] if places and task_id in places else 1.0 + shuffled(task_id)

    def task_data(self, space: LabelSpace, data: dict, prediction: TicketPrediction, priority: float) -> dict:
        """The task's data with the suggestion row, the suggested department and the queue priority."""
        return {**data, **space.suggestion_fields(prediction.top), SUGGESTED_FIELD: prediction.department,
                PRIORITY_FIELD: round(priority, 6)}

    def publish(self, space: LabelSpace, tasks: list[dict], predictions: list[TicketPrediction], labelled: int,
                places: Mapping[int, float] | None = None) -> list[dict]:
        """Write each task's suggestions into its data in Label Studio; returns the data as written."""
        client = self._client()
        written = [self.task_data(space, task["data"], prediction,
                                  self.queue_priority(prediction, task["id"], labelled, len(space.departments), places))
                   for task, prediction in zip(tasks, predictions)]
        changed = [(task["id"], data) for task, data in zip(tasks, written) if data != task["data"]]
        with ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="publish") as pool:
            list(pool.map(lambda item: client.update_task_data(*item), changed))  # list(): the first failure is raised
        return written

    def ensure_queue_tab(self, project_id: int, space: LabelSpace) -> int | None:
        """The id of the project's queue tab, created if it is missing; other tabs are never touched."""
        return self.ensure_tab(project_id, QUEUE_TAB_TITLE, lambda columns: queue_tab(space, columns))

    def ensure_route_tabs(self, project_id: int, space: LabelSpace) -> None:
        """The two tabs of routed tickets (POST /route): the ones that need a person, the audited auto-routed ones."""
        for kind in ROUTE_TABS:
            self.ensure_tab(project_id, ROUTE_TABS[kind], lambda columns, kind=kind: route_tab(space, columns, kind))

    def ensure_tab(self, project_id: int, title: str, build: Callable[[list[str]], dict]) -> int | None:
        """The id of the project's tab named `title`, created from `build(the project's columns)` if missing."""
        if (project_id, title) in self._tabs:
            return self._tabs[project_id, title]
        client = self._client()
        if client is None:
            return None
        with self._tab_lock:
            try:
                found = next((view["id"] for view in client.views(project_id) if (view.get("data") or {}).get("title") == title), None)
                if found is None:
                    found = client.create_view(project_id, build(client.columns(project_id))).get("id")
                    log.info("project %d: added the data-manager tab %r (tab %s)", project_id, title, found)
            except (LabelStudioUnavailable, LabelStudioRejected) as exc:
                log.warning("could not add the tab %r to project %d: %s", title, project_id, exc)
                return None
            self._tabs[project_id, title] = found
            return found

    def connected(self, project_id: int, space: LabelSpace, submit: Callable[[str, Callable[[], object]], object]) -> None:
        """Label Studio connected to the project (/setup, which must answer within 3 s): add its tab in the
        background, once per process."""
        if (project_id, QUEUE_TAB_TITLE) not in self._tabs:
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


def route_tab(space: LabelSpace, columns: list[str], kind: str) -> dict:
    """A tab of the routed tickets with `data.route == kind`, oldest first (a citizen's ticket waits its turn)."""
    shown = {f"tasks:data.{space.data_key}", f"tasks:data.{ROUTE_TICKET_FIELD}", f"tasks:data.{SUGGESTED_FIELD}", *SHOWN_COLUMNS}
    hidden = sorted(set(columns) - shown)
    return {
        "title": ROUTE_TABS[kind],
        "ordering": ["tasks:id"],
        "filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{ROUTE_FIELD}", "operator": "equal", "type": "String", "value": kind}]},
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
    }
