"""API errors as JSON: ``{"error": "what is wrong", "valid": [...]}`` with a status and headers.

Every error answer of the server has this one shape. A handler either returns
:func:`error_response` or raises :class:`ApiError`, which the ``json_errors`` middleware
(``stream_server/app.py``) turns into the same response.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def error_response(
    status: int, message: str, valid: list[Any] | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error: ``error`` says what is wrong, ``valid`` (when given) lists what would do."""
    body: dict[str, Any] = {"error": message}
    if valid is not None:
        body["valid"] = valid
    return web.json_response(body, status=status, headers=headers)


class ApiError(Exception):
    """An error answer raised from deep in a handler; the middleware sends :meth:`response`."""

    def __init__(
        self, status: int, message: str, valid: list[Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.valid = valid
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.valid, self.headers)
