"""What a client is told: bad requests, requests over a budget, a busy server."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["EXPECTED_PAYLOAD", "InvalidRequest", "RequestTooLarge", "ServerBusy"]

EXPECTED_PAYLOAD = (
    '{"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"], ...]}, "params": {"return_map": false}}'
)


class InvalidRequest(InputError):
    """A client error: the message says what was wrong and how to fix it (HTTP 400 when served)."""


class RequestTooLarge(InvalidRequest):
    """A request over one of its budgets (rows, decoded pixels, returned bytes); the message names the
    limit and how to fit in it (HTTP 413 when served)."""


class ServerBusy(RuntimeError):
    """The process scores ``max_in_flight`` requests already and this one waited ``wait_s`` seconds for its
    turn: not the client's error, retry later (HTTP 503 when served)."""
