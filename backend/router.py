"""Dispatch without a person where the serving model is sure, with a precision proven per version (issue 13).

Read it top to bottom as a ticket travels:

1. ``route`` (POST /route): the hotline's ticket system posts tickets. A ticket id routed before gets its stored
   answer again (same text) or a 409 (another text): one id, one decision. The others are predicted by the
   project's serving model and decided against that version's thresholds (``core.routing``, proven on the frozen
   evaluation split, which the version never trained on, when the version was scored): ``auto`` when the top-1
   probability reaches its department's threshold and auto-routing with the version has not been stopped, else
   ``review``. A fixed share of the auto-routed tickets (AUDIT_RATE) is also marked for audit. Decisions are stored
   before the answer leaves.
2. ``push``: the tickets a person must see become Label Studio tasks, in the background, marked in ``data.route``
   (``review`` or ``audit``) for the two data-manager tabs. A review task carries the suggestion row with the
   model's department preselected; an audit task carries neither, so the auditor's answer is not anchored on the
   model's and the audit measures the model, not the auditor's agreement with it.
3. ``reviewed``: a person's answer to such a task (webhook, or a reconcile that pulled it) is its review; an
   audited one counts towards its version's realised precision, and once the audits show that precision below the
   target (``AutoRouting.audit``), auto-routing with that version stops for good: every ticket goes to review until
   another version serves.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from backend.annotator_view import ROUTE_FIELD, ROUTE_TICKET_FIELD, SUGGESTED_FIELD, AnnotatorView
from backend.background import Background
from backend.errors import ApiError
from backend.models import ModelManager
from core.classifier import TicketPrediction
from core.jobs import worker_id
from core.label_studio import LabelStudioClient, LabelStudioUnavailable
from core.labeling import LabelSpace
from core.routing import AUDIT, AUTO, REVIEW, DepartmentThresholds
from core.settings import Settings
from core.store import DEFAULT_PROJECT, Route, Store, now, text_key
from core.text import brief, has_content

log = logging.getLogger(__name__)

MAX_TICKET_ID_CHARS = 200
PUSH_CHUNK = 200  # tasks per Label Studio import
PUSH_LEASE_SECONDS = 120.0
BATCH_FIELD = "route_batch"  # tasks of one import share it, so an import whose answer was lost can be found again


@dataclass(frozen=True)
class Ticket:
    id: str
    text: str


def read_tickets(body: dict, max_tickets: int) -> list[Ticket]:
    """The tickets of a /route body (``{"project": 3, "tickets": [{"id": "A-1", "text": "..."}]}``), or an
    ApiError that names every ticket that is wrong and why: all or nothing, so a fixed batch can simply be sent
    again."""
    tickets = body.get("tickets")
    if not isinstance(tickets, list) or not tickets:
        raise ApiError(422, "'tickets' must be a non-empty list of {\"id\": ..., \"text\": ...}")
    if len(tickets) > max_tickets:
        raise ApiError(413, f"{len(tickets)} tickets in one call; at most {max_tickets} (MAX_ROUTE_TICKETS)")
    problems, read, texts = [], [], {}
    for index, item in enumerate(tickets):
        problem = _ticket_problem(item)
        if problem is None:
            ticket = Ticket(str(item["id"]), item["text"])
            if texts.setdefault(ticket.id, ticket.text) != ticket.text:
                problem = f"ticket id {brief(ticket.id)} appears twice in this call with different texts"
            read.append(ticket)
        if problem is not None:
            problems.append({"index": index, "error": problem})
    if problems:
        raise ApiError(422, f"{len(problems)} of {len(tickets)} tickets cannot be routed; nothing was routed: {problems[0]['error']}"
                            + (f" (ticket {problems[0]['index']})" if len(tickets) > 1 else ""), problems=problems[:100])
    return read


def _ticket_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return f"a ticket must be an object with 'id' and 'text', got {type(item).__name__}"
    ticket_id, text = item.get("id"), item.get("text")
    if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)):
        return f"'id' must be a string or an integer, got {brief(ticket_id)}"
    if isinstance(ticket_id, int) and ticket_id < 0:
        return f"an integer 'id' must not be negative, got {ticket_id}"
    if isinstance(ticket_id, str) and not (ticket_id.strip() and ticket_id.isprintable() and len(ticket_id) <= MAX_TICKET_ID_CHARS):
        return f"'id' must be 1 to {MAX_TICKET_ID_CHARS} printable characters, got {brief(ticket_id)}"
    if not isinstance(text, str):
        return f"'text' must be a string, got {brief(text)}"
    if not has_content(text):
        return "'text' is empty or has no content (only spaces, punctuation or control characters)"
    return None


class Router:
    def __init__(self, settings: Settings, store: Store, models: ModelManager, view: AnnotatorView,
                 client: Callable[[], LabelStudioClient | None], background: Background):
        self.settings = settings
        self.store = store
        self.models = models
        self.view = view
        self._client = client
        self.background = background
        self.policy = settings.auto_routing()
        self._thresholds: dict[tuple[int, str], DepartmentThresholds] = {}
        self._owner = worker_id()
        self._seen_seq: dict[int, int] = {}  # per project, the newest label the sweep has looked at

    # -- 1. route --------------------------------------------------------------------------------------------
    def route(self, project_id: int, tickets: list[Ticket]) -> list[dict]:
        if project_id == DEFAULT_PROJECT:
            raise ApiError(422, "'project' must be the integer id of the Label Studio project whose people review the tickets")
        if self.store.project(project_id) is None:
            raise ApiError(404, f"project {project_id} is not connected to this backend: connect it in Label Studio"
                                " (Settings → Model) so the backend knows its departments")
        stored = self.store.routes(project_id, {t.id for t in tickets})
        conflicts = sorted({t.id for t in tickets if t.id in stored and stored[t.id].text_key != text_key(t.text)})
        if conflicts:
            raise ApiError(409, f"{len(conflicts)} ticket ids were routed before with another text (first: {brief(conflicts[0])});"
                                " a ticket id is routed once: send new tickets under new ids", ids=conflicts[:100])
        new = list({t.id: t for t in tickets if t.id not in stored}.values())
        if new:
            version, predictions = self.models.predict(project_id, [t.text for t in new])
            routes = self._decide(project_id, version, new, predictions)
            stored.update(self.store.save_routes(routes))
            if any(r.text is not None for r in routes):
                self.background.submit(f"push-routes-{project_id}", lambda: self.push(project_id))
            raced = sorted({t.id for t in new if stored[t.id].text_key != text_key(t.text)})
            if raced:  # another replica routed the same id with another text a moment ago
                raise ApiError(409, f"{len(raced)} ticket ids were routed meanwhile with another text (first: {brief(raced[0])})", ids=raced[:100])
        return [stored[t.id].to_dict() for t in tickets]

    def thresholds(self, project_id: int, version: str) -> DepartmentThresholds | None:
        """A version's thresholds, from its report on the frozen split (None until it has been scored)."""
        if (project_id, version) not in self._thresholds:
            found = self.store.get_version(project_id, version)
            proven = (found.metrics or {}).get("routing") if found else None
            if not proven:
                return None
            self._thresholds[project_id, version] = DepartmentThresholds.from_dict(proven)
        return self._thresholds[project_id, version]

    def _decide(self, project_id: int, version: str, tickets: list[Ticket], predictions: list[TicketPrediction]) -> list[Route]:
        thresholds = self.thresholds(project_id, version)
        stats = self.store.route_stats(project_id, version)
        stopped = stats.stopped_at is not None or not self.settings.auto_route
        routes = []
        for ticket, p in zip(tickets, predictions):
            decision = self.policy.decide(p.department, p.score, thresholds, stopped)
            audit = decision == AUTO and self.policy.audit_selected(ticket.id, version)
            seen = decision == REVIEW or audit
            routes.append(Route(
                project_id=project_id, ticket_id=ticket.id, text_key=text_key(ticket.text), department=p.department, probability=p.score,
                model_version=version, decision=decision, threshold=thresholds.threshold_for(p.department) if thresholds else None,
                audit=int(audit), reason=None if decision == AUTO else self._why_review(p, thresholds, stats.stop_reason),
                text=ticket.text if seen else None, top=json.dumps(p.top, ensure_ascii=False) if seen else None, task_id=None,
                reviewed_department=None, created_at=now()))
        return routes

    def _why_review(self, p: TicketPrediction, thresholds: DepartmentThresholds | None, stop_reason: str | None) -> str:
        if not self.settings.auto_route:
            return "auto-routing is off (AUTO_ROUTE=false)"
        if stop_reason:
            return f"auto-routing with this version was stopped: {stop_reason}"
        if thresholds is None:
            return "this version has not been calibrated on the evaluation split yet"
        if thresholds.target < self.policy.target or thresholds.confidence < self.policy.confidence:
            return (f"this version's thresholds were proven for precision {thresholds.target} at {thresholds.confidence:.0%}, less than"
                    " AUTO_ROUTE_PRECISION/AUTO_ROUTE_CONFIDENCE ask; the next version is calibrated for them")
        threshold = thresholds.threshold_for(p.department)
        if threshold is None:
            return f"no threshold could be proven for {p.department} yet (too few or too uncertain calibration rows)"
        return f"probability {p.score:.3f} is below the threshold {threshold:.3f} for {p.department}"

    # -- 2. push to Label Studio -----------------------------------------------------------------------------
    def push(self, project_id: int) -> int:
        """Create the Label Studio tasks of the project's routed tickets that need a person; returns how many.
        One replica at a time (a lease in the store), so no ticket gets two tasks."""
        client = self._client()
        if client is None or not self.store.take_lease(f"push-routes-{project_id}", self._owner, PUSH_LEASE_SECONDS):
            return 0
        space = self.models.space(project_id)
        pushed = 0
        while routes := self.store.routes_to_push(project_id, PUSH_CHUNK):
            batch = hashlib.sha1(f"{project_id}\x00{routes[0].ticket_id}".encode()).hexdigest()[:16]
            found = self._created_before(client, project_id, batch)
            todo = [r for r in routes if r.ticket_id not in found]
            ids = client.import_tasks(project_id, [self._task(space, r, batch) for r in todo]) if todo else []
            if len(ids) != len(todo):
                raise LabelStudioUnavailable(f"Label Studio created {len(ids)} tasks for {len(todo)} routed tickets in project {project_id}")
            self.store.set_route_tasks(project_id, {**found, **{r.ticket_id: task_id for r, task_id in zip(todo, ids)}})
            self.store.take_lease(f"push-routes-{project_id}", self._owner, PUSH_LEASE_SECONDS)
            pushed += len(todo)
        self.view.ensure_route_tabs(project_id, space)
        if pushed:
            log.info("project %d: %d routed tickets are now Label Studio tasks", project_id, pushed)
        return pushed

    def _created_before(self, client: LabelStudioClient, project_id: int, batch: str) -> dict[str, int]:
        """Tasks an earlier import of this batch created although its answer never arrived (a timeout)."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{BATCH_FIELD}", "operator": "equal", "type": "String", "value": batch}]}}
        return {task["data"][ROUTE_TICKET_FIELD]: task["id"] for task in client.tasks_where(project_id, query)
                if ROUTE_TICKET_FIELD in task["data"]}

    @staticmethod
    def _task(space: LabelSpace, route: Route, batch: str) -> dict:
        data = {space.data_key: route.text, ROUTE_FIELD: AUDIT if route.decision == AUTO else REVIEW, ROUTE_TICKET_FIELD: route.ticket_id,
                BATCH_FIELD: batch}
        if route.decision == AUTO:  # an audit: no suggestion, nothing preselected
            return {"data": data}
        top = [tuple(pair) for pair in json.loads(route.top or "[]")]
        data = {**data, **space.suggestion_fields(top), SUGGESTED_FIELD: route.department}
        return {"data": data, "predictions": [{"result": space.prediction_result(route.department, top, data),
                                               "score": round(route.probability, 6), "model_version": route.model_version}]}

    # -- 3. people answer ------------------------------------------------------------------------------------
    def reviewed(self, project_id: int, task_id: int, department: str) -> None:
        """A gold label arrived for a task: if it shows a routed ticket, that is the ticket's review."""
        route = self.store.record_review(project_id, task_id, department)
        if route is not None and route.audit:
            self.check_audit(project_id, route.model_version)

    def check_audit(self, project_id: int, version: str) -> None:
        stats = self.store.route_stats(project_id, version)
        if stats.stopped_at is not None:
            return
        verdict = self.policy.audit(stats.audited, stats.correct)
        if verdict.stop:
            reason = (f"{verdict.correct} of {verdict.audited} audited tickets were right; the precision is at most {verdict.upper:.3f}"
                      f" with {self.policy.confidence:.0%} confidence, below the target {self.policy.target}")
            if self.store.stop_auto_routing(project_id, version, reason):
                log.warning("project %d: auto-routing with %s stopped: %s", project_id, version, reason)

    def sweep(self) -> None:
        """Catch up after lost webhooks or a failed push, for every project that routes: reviews from labels a
        reconcile pulled (only labels newer than the last sweep are read), tasks not created yet."""
        for project_id in self.store.route_projects():
            recorded, self._seen_seq[project_id] = self.store.reviews_from_labels(project_id, self._seen_seq.get(project_id, 0))
            if recorded:
                for version in self.store.route_versions(project_id):
                    self.check_audit(project_id, version)
            if self.store.routes_to_push(project_id, 1):
                try:
                    self.push(project_id)
                except LabelStudioUnavailable as exc:
                    log.warning("project %d: routed tickets wait for Label Studio: %s", project_id, exc)

    # -- what people ask -------------------------------------------------------------------------------------
    def state(self, project_id: int) -> dict:
        """Auto-routing of a project as /status and /metrics show it: the serving version's thresholds, what it
        decided, what its audits found, and whether it still routes without a person."""
        version = self.models.serving_version(project_id)
        if version is None:
            return {"state": "no model yet"}
        thresholds = self.thresholds(project_id, version)
        stats = self.store.route_stats(project_id, version)
        audit = self.policy.audit(stats.audited, stats.correct)
        if not self.settings.auto_route:
            state = "off"
        elif stats.stopped_at is not None:
            state = "stopped"
        elif thresholds is None or not thresholds.coverage:
            state = "no threshold proven yet"
        else:
            state = "on"
        return {
            "state": state, "model_version": version, "target_precision": self.policy.target, "confidence": self.policy.confidence,
            "audit_rate": self.policy.audit_rate,
            "coverage": round(thresholds.coverage, 4) if thresholds else None,
            "calibration_rows": thresholds.n if thresholds else 0,
            "departments_with_own_threshold": len(thresholds.by_department) if thresholds else 0,
            "routed": {AUTO: stats.auto, REVIEW: stats.review, AUDIT: stats.audit_selected},
            "audit": {"audited": stats.audited, "correct": stats.correct,
                      "precision": None if audit.precision is None else round(audit.precision, 4),
                      "lower": round(audit.lower, 4), "upper": round(audit.upper, 4)},
            "stopped_at": stats.stopped_at, "stop_reason": stats.stop_reason,
        }


