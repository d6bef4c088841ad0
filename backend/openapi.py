"""The contract of the endpoints a hotline's own systems call (OpenAPI 3.1), served at GET /openapi.json.

Label Studio's own calls (/setup, /predict, /webhook) follow its ML-backend protocol and are listed by name only.
"""
from __future__ import annotations

from core.routing import AUTO, REVIEW
from core.settings import Settings

_ERROR = {"type": "object", "required": ["error", "status"],
          "properties": {"error": {"type": "string", "description": "what was wrong, in words"}, "status": {"type": "integer"}}}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi(settings: Settings) -> dict:
    ticket = {"type": "object", "required": ["id", "text"], "additionalProperties": True, "properties": {
        "id": {"type": ["string", "integer"], "description": "the ticket's id in the caller's system; a ticket id is routed once"},
        "text": {"type": "string", "minLength": 1, "maxLength": settings.max_text_chars, "description": "the ticket as the citizen said it"}}}
    decision = {"type": "object", "required": ["id", "department", "probability", "model_version", "decision"], "properties": {
        "id": {"type": "string"},
        "department": {"type": "string", "description": "the model's department; for review, the suggestion a person sees"},
        "probability": {"type": "number", "minimum": 0, "maximum": 1, "description": "the model's calibrated probability of that department"},
        "model_version": {"type": "string"},
        "decision": {"type": "string", "enum": [AUTO, REVIEW],
                     "description": f"{AUTO}: dispatch to `department` now; {REVIEW}: a person decides in Label Studio"},
        "threshold": {"type": ["number", "null"], "description": "the probability above which this department is auto-routed"},
        "audit": {"type": "boolean", "description": "an auto-routed ticket that a person also checks, unseen, to measure precision"},
        "reason": {"type": "string", "description": "why a person has to look (review only)"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "12345 hotline routing backend", "version": "1",
                 "description": "Routes hotline tickets to departments. Tickets the model is sure of (a precision of at least "
                                f"AUTO_ROUTE_PRECISION={settings.auto_route_precision} proven with {settings.auto_route_confidence:.0%} "
                                "confidence for the model version) are dispatched without a person; the rest become Label Studio tasks."},
        "components": {
            "schemas": {"Error": _ERROR, "Ticket": ticket, "Decision": decision},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic", "description": "BASIC_AUTH_USER / BASIC_AUTH_PASS, when set"}},
        },
        "security": [{"basic": []}] if settings.auth_enabled else [],
        "paths": {
            "/route": {"post": {
                "summary": "Route tickets: a department and a decision per ticket, in the order sent",
                "description": "All or nothing: one wrong ticket refuses the call and names every wrong one. Sending a ticket id "
                               "again returns its first decision (a retry is safe); the same id with another text is a conflict.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["project", "tickets"], "properties": {
                        "project": {"type": "integer", "minimum": 1, "description": "the Label Studio project whose people review tickets"},
                        "tickets": {"type": "array", "minItems": 1, "maxItems": settings.max_route_tickets,
                                    "items": {"$ref": "#/components/schemas/Ticket"}}}}}}},
                "responses": {
                    "200": {"description": "one decision per ticket", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"project": {"type": "integer"},
                                                         "results": {"type": "array", "items": {"$ref": "#/components/schemas/Decision"}}}}}}},
                    "401": _error("authentication required"),
                    "404": _error("the project is not connected to this backend"),
                    "409": _error("a ticket id was routed before with another text"),
                    "413": _error("more tickets than MAX_ROUTE_TICKETS, or a body over MAX_REQUEST_BYTES"),
                    "422": _error("the body or a ticket is not what this contract says; `problems` lists each"),
                    "503": _error("the project's model is still being prepared; retry after the Retry-After seconds"),
                }}},
            "/health": {"get": {"summary": "liveness and the serving model versions (Label Studio calls it)",
                                "responses": {"200": {"description": "UP"}}}},
            "/status": {"get": {"summary": "models, labels, jobs and auto-routing per project, as JSON",
                                "responses": {"200": {"description": "status"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
        },
        "x-label-studio-protocol": ["/setup", "/predict", "/webhook", "/versions"],
    }
