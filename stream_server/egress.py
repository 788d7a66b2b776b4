"""Egress: a channel published once over WHIP (RFC 9725) to another server, usually an SFU that
fans it out to any number of viewers (Janus, LiveKit Ingress, MediaMTX, hosted WHIP services).

The egress is one more subscriber of the channel, like a WHEP viewer: its frames go to one
outbound RTCPeerConnection, so the avatar is encoded once for the SFU whatever the audience.
It offers send-only audio and video with every ICE candidate (no trickle), POSTs the offer as
``application/sdp`` (with ``Authorization: Bearer`` when a token is given), and expects ``201``
with the answer and a ``Location``. A refused POST, or a connection that fails or is closed,
is retried with a growing delay until the egress is stopped; then the resource is DELETEd (best
effort) and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from stream_server.channels import ChannelTrack, Subscriber
from stream_server.session import peer_connection

if TYPE_CHECKING:
    from stream_server.channels import Channel

log = logging.getLogger(__name__)

SDP = "application/sdp"
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # waits between attempts; the last one repeats
STEADY_S = 30.0  # a connection that stayed up this long starts the backoff afresh
POST_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 20.0  # from the answer to ICE + DTLS connected
DELETE_TIMEOUT_S = 3.0  # stopping must not hang on an endpoint that has gone
STATES = ("connecting", "live", "retrying", "stopped")


class EgressError(Exception):
    """Why one attempt failed, in words for the API and the page."""


def check_url(url: object) -> str:
    """The WHIP endpoint URL, or ValueError saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError('give the WHIP endpoint as "url": "https://sfu.example/whip/NAME"')
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the WHIP URL must be http:// or https:// (got {url!r})")
    if not parts.hostname:
        raise ValueError(f"the WHIP URL has no host (got {url!r})")
    return url.strip()


class Egress:
    """Publishes ``channel`` to one WHIP endpoint, reconnecting until :meth:`stop`."""

    def __init__(self, channel: Channel, url: str, token: str | None = None, ice_servers: list[dict] | None = None) -> None:
        self.channel = channel
        self.url = check_url(url)
        self.token = token or None
        self.ice_servers = ice_servers or []
        self.state = "connecting"
        self.error: str | None = None  # the last attempt's failure, kept while retrying
        self.attempts = 0
        self.resource: str | None = None  # the absolute Location of the live attempt
        self.live_since: float | None = None
        self.retry_at: float | None = None
        self.sent = {"video": 0, "audio": 0}  # frames handed to the encoders by finished attempts
        self._pc: RTCPeerConnection | None = None
        self._subscriber: Subscriber | None = None
        self._tracks: list[ChannelTrack] = []
        self._task: asyncio.Task[None] | None = None

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"egress-{self.channel.name}")

    async def stop(self) -> None:
        """Stop for good: the resource is DELETEd and the connection closed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._teardown()
        self.state, self.retry_at = "stopped", None
        self.channel.notify({"type": "egress", **self.describe()})

    async def _run(self) -> None:
        failures = 0
        while True:
            self.attempts += 1
            self._set_state("connecting")
            started = time.monotonic()
            try:
                await self._connect()
                self._set_state("live")
                self.error = None
                self.error = await self._until_down()
            except EgressError as exc:
                self.error = str(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the retries silently
                log.exception("channel %s: egress attempt failed", self.channel.name)
                self.error = f"{type(exc).__name__}: {exc}"
            log.warning("channel %s: egress to %s: %s", self.channel.name, self.url, self.error)
            await self._teardown()
            failures = 0 if time.monotonic() - started >= STEADY_S else failures + 1
            delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures else BACKOFF_S[0]
            self.retry_at = time.time() + delay
            self._set_state("retrying")
            await asyncio.sleep(delay)
            self.retry_at = None

    def _set_state(self, state: str) -> None:
        self.state = state
        self.channel.notify({"type": "egress", **self.describe()})

    # -- one attempt ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        """Offer, POST, apply the answer, and wait for the connection; EgressError if refused."""
        pc = peer_connection(self.ice_servers)
        self._pc, self._subscriber = pc, self.channel.subscribe()
        self._tracks = [ChannelTrack(kind, self._subscriber) for kind in ("audio", "video")]
        for track in self._tracks:
            pc.addTransceiver(track, direction="sendonly")
        up = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("connected", "failed", "closed"):
                up.set()

        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
        answer, location = await self._post(pc.localDescription.sdp)
        self.resource = urljoin(self.url, location)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        except Exception as exc:
            raise EgressError(f"the endpoint's answer could not be used: {exc}") from exc
        try:
            await asyncio.wait_for(up.wait(), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise EgressError(f"the connection did not come up within {CONNECT_TIMEOUT_S:g} s (ICE: no path to the endpoint's candidates)") from None
        if pc.connectionState != "connected":
            raise EgressError(f"the connection {pc.connectionState} before it came up (ICE or DTLS)")
        self.live_since = time.time()

    async def _post(self, offer: str) -> tuple[str, str]:
        """POST the offer: the answer SDP and the Location, or EgressError with what was said."""
        headers = {"Content-Type": SDP, **self._auth()}
        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(self.url, data=offer, headers=headers) as response:
                    body = await response.text()
                    location = response.headers.get("Location")
        except asyncio.TimeoutError:
            raise EgressError(f"no answer from {self.url} within {POST_TIMEOUT_S:g} s") from None
        except aiohttp.ClientError as exc:
            raise EgressError(f"cannot reach {self.url}: {exc}") from exc
        if response.status != 201:
            said = " ".join(body.split())[:300] or "nothing"
            raise EgressError(f"the endpoint answered {response.status} {response.reason}: {said}")
        if not location:
            raise EgressError("the endpoint answered 201 without a Location header (not a WHIP endpoint?)")
        if not body.lstrip().startswith("v=0"):
            raise EgressError("the endpoint answered 201 without an SDP answer")
        return body, location

    async def _until_down(self) -> str:
        """Wait while the connection is up; says how it went down."""
        pc = self._pc
        assert pc is not None
        down = asyncio.Event()
        pc.on("connectionstatechange", lambda: down.set() if pc.connectionState in ("failed", "closed") else None)
        if pc.connectionState not in ("failed", "closed"):
            await down.wait()
        return f"the connection to the endpoint {pc.connectionState}"

    async def _teardown(self) -> None:
        """DELETE the resource (best effort: the endpoint may be gone) and close the peer."""
        resource, self.resource, self.live_since = self.resource, None, None
        if resource is not None:
            try:
                timeout = aiohttp.ClientTimeout(total=DELETE_TIMEOUT_S)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    async with http.delete(resource, headers=self._auth()) as response:
                        if response.status >= 300:
                            log.info("egress: DELETE %s answered %s", resource, response.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("egress: DELETE %s failed: %s", resource, exc or type(exc).__name__)
        if self._subscriber is not None:
            self.channel.unsubscribe(self._subscriber)
            self._subscriber = None
        for track in self._tracks:
            self.sent[track.kind] += track.sent
        self._tracks = []
        if self._pc is not None:
            pc, self._pc = self._pc, None
            await pc.close()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # -- state ---------------------------------------------------------------------------------
    def frames_sent(self) -> dict[str, int]:
        """Frames handed to this egress's encoders, over every attempt."""
        return {kind: self.sent[kind] + sum(t.sent for t in self._tracks if t.kind == kind) for kind in self.sent}

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "token": self.token is not None,  # never echoed
            "state": self.state,
            "error": self.error,
            "attempts": self.attempts,
            "resource": self.resource,
            "live_since": self.live_since,
            "retry_in_s": round(max(0.0, self.retry_at - time.time()), 1) if self.retry_at else None,
            "frames_sent": self.frames_sent(),
        }
