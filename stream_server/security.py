"""Access control: the token every API call carries, the CORS allow-list, TLS, and the start-up
check that refuses to expose the server to a network without a token.

Two things answer without the token: the page's own files (they hold no data) and the health
probe ``GET /healthz`` (load balancers and orchestrators probe it unauthenticated; it says only
that the server is alive and how loaded it is: sessions, their limit, the event loop's lag)."""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from stream_server.config import Settings
from stream_server.http_errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_QUERY = "token"  # for WebSockets and <img>, which cannot send an Authorization header
HEALTH_PATH = "/healthz"  # liveness and load only: answered without the token


class ExposureError(ValueError):
    """The settings would expose the server unsafely; the message says what to add."""


def is_local_host(host: str) -> bool:
    """True when ``host`` binds to this machine only (loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve to anything


def start_up_notes(settings: Settings) -> list[str]:
    """What the operator must know at start-up; raises ExposureError for an unsafe exposure."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ExposureError("give both --tls-cert and --tls-key, or neither")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ExposureError(f"TLS file {path} does not exist")
    notes = []
    if not is_local_host(settings.host):
        if not settings.token:
            raise ExposureError(
                f"--host {settings.host} exposes the server to the network, which needs an access token: "
                "pass --token SECRET or set LIPSYNC_TOKEN (for example: "
                "--token \"$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')\")"
            )
        notes.append(f"listening on {settings.host}: every API and WebSocket call needs the access token")
        if settings.tls_cert is None:
            notes.append(
                "no TLS: browsers allow the camera only on https:// or localhost; "
                "add --tls-cert/--tls-key (or put an HTTPS proxy in front)"
            )
    elif settings.token:
        notes.append("every API and WebSocket call needs the access token")
    if settings.cors_origins:
        notes.append(f"other origins allowed to call the API: {', '.join(settings.cors_origins)}")
    return notes


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


def is_public(request: web.Request) -> bool:
    """The page itself (HTML, JS, CSS) holds no data and loads without the token; so does the
    health probe, which tells only liveness and load."""
    route = request.match_info.route
    return request.method in ("GET", "HEAD") and (
        request.path in ("/", HEALTH_PATH) or isinstance(route.resource, web.StaticResource)
    )


def presented_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query.get(TOKEN_QUERY, "")


def token_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" or is_public(request):
            return await handler(request)
        given = presented_token(request).encode()
        if not hmac.compare_digest(given, expected):
            message = "this server needs an access token" if not given else "wrong access token"
            return error_response(
                401,
                f"{message}: send it as 'Authorization: Bearer TOKEN' (or ?token=TOKEN on WebSockets)",
                headers={"WWW-Authenticate": 'Bearer realm="lipsync"'},
            )
        return await handler(request)

    return require_token


def same_origin(request: web.Request, origin: str) -> bool:
    return urlsplit(origin).netloc.lower() == (request.host or "").lower()


def cors_middleware(allowed: list[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Calls from another origin are answered only when it is on the allow-list; a WebSocket or
    POST from an origin that is not allowed is refused outright (browsers do not preflight them)."""
    allow = {origin.rstrip("/").lower() for origin in allowed}

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or same_origin(request, origin):
            return await handler(request)
        if origin.rstrip("/").lower() not in allow:
            return error_response(403, f"origin {origin} is not allowed to call this server (see --cors-origin)")
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Vary": "Origin",
            "Access-Control-Expose-Headers": "Retry-After",
        }
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            headers["Access-Control-Max-Age"] = "600"
            return web.Response(status=204, headers=headers)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        if not response.prepared:
            response.headers.update(headers)
        return response

    return cors
