"""Errors a client can fix: each becomes a 4xx JSON answer that says what was wrong."""
from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def to_dict(self) -> dict:
        return {"error": self.message, "status": self.status, **self.details}
