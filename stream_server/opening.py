"""Opening a session for an HTTP route: the one rule that turns what ``Server.open_session``
raises into an HTTP answer, shared by ``POST /offer`` and WHIP's ``POST /whip/{channel}``.

A full server is ``503`` with ``Retry-After``; an offer that cannot be answered ``400``; an
avatar the backend cannot use ``422`` (the route says which avatar); a backend that failed to
load ``503``. Each is raised as :class:`ApiError`, which the error middleware sends as JSON.
"""

from __future__ import annotations

from aiortc import RTCSessionDescription

from engines.base import AvatarError
from stream_server.http_errors import ApiError
from stream_server.hub import CapacityError, Server
from stream_server.options import SessionOptions
from stream_server.session import OfferError, Session


async def open_or_refuse(
    server: Server, sdp: str, options: SessionOptions, avatar_problem: str, send_back: bool = True
) -> tuple[Session, RTCSessionDescription]:
    """``server.open_session`` for an offer; raises ApiError with the status the error maps to.

    ``avatar_problem`` starts the 422 message ("avatar 'x' cannot be used with mesh"); the
    backend's own reason follows it.
    """
    try:
        return await server.open_session(sdp, "offer", options, send_back)
    except CapacityError as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": str(server.settings.retry_after_s)}) from exc
    except OfferError as exc:
        raise ApiError(400, str(exc)) from exc
    except AvatarError as exc:
        raise ApiError(422, f"{avatar_problem}: {exc}") from exc
    except RuntimeError as exc:  # the backend failed to load
        raise ApiError(503, str(exc)) from exc
