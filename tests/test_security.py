"""Access: the token on every API and WebSocket call, the CORS allow-list, TLS, the start-up
refusal to expose the server without a token, and names that cannot reach outside."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from benchmarks.synthetic_peer import run_peer
from stream_server.config import Settings
from stream_server.security import ExposureError, is_local_host, start_up_notes
from tests.conftest import StartServer

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parents[1]

# every API route, with a call that would succeed (or fail for another reason) given the token
API_CALLS = [
    ("GET", "/backends", None),
    ("GET", "/avatars", None),
    ("GET", "/avatars/astronaut.jpg", None),
    ("POST", "/avatars", b"not an image"),
    ("GET", "/config", None),
    ("GET", "/metrics", None),
    ("POST", "/offer", b"{}"),
    ("DELETE", "/sessions/abc", None),
    ("GET", "/ws/stats?session=abc", None),
    ("POST", "/whip/studio", b"v=0"),
    ("PATCH", "/whip/studio", b""),
    ("DELETE", "/whip/studio/abc", None),
    ("POST", "/whep/studio", b"v=0"),
    ("DELETE", "/whep/studio/abc", None),
    ("GET", "/channels", None),
    ("POST", "/channels", b"{}"),
    ("DELETE", "/channels/studio", None),
    ("POST", "/channels/studio/recording", None),
    ("DELETE", "/channels/studio/recording", None),
    ("GET", "/ws/channels/studio", None),
    ("GET", "/view/studio", None),
]


@pytest.mark.parametrize(("method", "path", "body"), API_CALLS, ids=[f"{m} {p}" for m, p, _ in API_CALLS])
async def test_every_api_route_needs_the_token(start_server: StartServer, method: str, path: str, body: bytes | None) -> None:
    live = await start_server(token=TOKEN)
    async with aiohttp.ClientSession() as http:
        for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "token=wrong")]:
            url = f"{live.url}{path}{'&' if '?' in path else '?'}{query}" if query else f"{live.url}{path}"
            async with http.request(method, url, data=body, headers=headers) as response:
                reply = await response.json()
            assert response.status == 401, (headers, query, response.status)
            assert "access token" in reply["error"] and response.headers["WWW-Authenticate"].startswith("Bearer")
        # with it (header, or query for WebSockets and images) the route answers as usual
        async with http.request(method, f"{live.url}{path}", data=body, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status != 401, await response.text()
        url = f"{live.url}{path}{'&' if '?' in path else '?'}token={TOKEN}"
        async with http.request(method, url, data=body) as response:
            assert response.status != 401


async def test_the_health_probe_answers_without_the_token_and_tells_only_liveness_and_load(start_server: StartServer) -> None:
    """Load balancers probe /healthz unauthenticated; every other route still needs the token
    (``API_CALLS`` above, which lists every other route)."""
    live = await start_server(token=TOKEN)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/healthz") as response:
            assert response.status == 200
            assert set(await response.json()) == {"status", "instance", "sessions", "max_sessions", "free", "loop_lag_ms"}
        async with http.head(f"{live.url}/healthz") as response:
            assert response.status == 200
        for method, path, body in API_CALLS:
            async with http.request(method, f"{live.url}{path}", data=body) as response:
                assert response.status == 401, (method, path, response.status)


async def test_the_page_itself_loads_without_the_token_and_a_session_runs_with_it(start_server: StartServer) -> None:
    live = await start_server(token=TOKEN)
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/app.js", "/style.css"):
            async with http.get(f"{live.url}{path}") as response:
                assert response.status == 200, path
        async with http.get(f"{live.url}/config", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert (await response.json())["token_required"] is True
    refused = await run_peer(live.url, 0.5, {"backend": "passthrough"})
    assert refused.status == 401
    run = await run_peer(live.url, 1.5, {"backend": "passthrough"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert run.status == 200 and len(run.video_arrivals) > 10
    async with aiohttp.ClientSession() as http:  # the stats socket: token in the query, as the page sends it
        for token, status in [("", 401), (TOKEN, 404)]:  # 404: let in, but that session is over
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{live.url}/ws/stats?session={run.session_id}&token={token}")
            assert refused.value.status == status


async def test_cors_allows_listed_origins_only(start_server: StartServer) -> None:
    live = await start_server(cors_origins=["https://studio.example"])
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{live.url}/offer", headers={"Origin": "https://studio.example", "Access-Control-Request-Method": "POST"}) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://studio.example"
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        async with http.get(f"{live.url}/backends", headers={"Origin": "https://studio.example"}) as response:
            assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "https://studio.example"
        for method, path in [("GET", "/backends"), ("POST", "/offer"), ("OPTIONS", "/offer")]:
            async with http.request(method, f"{live.url}{path}", headers={"Origin": "https://evil.example"}) as response:
                assert response.status == 403 and "not allowed" in (await response.json())["error"]
                assert "Access-Control-Allow-Origin" not in response.headers
        # a WebSocket from a foreign page is refused (browsers do not apply CORS to WebSockets)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{live.url}/ws/stats?session=x", headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        # the page's own origin is always allowed
        async with http.get(f"{live.url}/backends", headers={"Origin": live.url}) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/../pyproject.toml", 404),
        ("/%2e%2e/pyproject.toml", 404),
        ("/..%2Fpyproject.toml", 404),
        ("/avatars/..%2F..%2Fpyproject.jpg", 404),
        ("/avatars/%2e%2e.jpg", 404),
        ("/web_client/../stream_server/config.py", 404),
    ],
)
async def test_paths_and_names_never_reach_outside(live: object, path: str, status: int) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}{path}") as response:  # type: ignore[attr-defined]
            text = await response.text()
    assert response.status in (status, 403) and "[project]" not in text and "BaseSettings" not in text


def test_a_non_local_host_needs_a_token() -> None:
    assert is_local_host("127.0.0.1") and is_local_host("::1") and is_local_host("localhost")
    assert not is_local_host("0.0.0.0") and not is_local_host("192.0.2.2") and not is_local_host("example.org")
    with pytest.raises(ExposureError, match="needs an access token"):
        start_up_notes(Settings(host="0.0.0.0"))
    notes = start_up_notes(Settings(host="0.0.0.0", token="x"))
    assert any("needs the access token" in n for n in notes) and any("no TLS" in n for n in notes)
    assert start_up_notes(Settings()) == []
    with pytest.raises(ExposureError, match="both --tls-cert and --tls-key"):
        start_up_notes(Settings(tls_cert=Path("cert.pem")))


def test_serve_refuses_to_expose_itself_without_a_token() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream_server", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and "needs an access token" in result.stderr and "--token" in result.stderr


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


async def test_serve_speaks_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-m", "stream_server", "serve", "--port", "0", "--backend", "passthrough", "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("Serving on https://127.0.0.1:"), line + server.stderr.read()  # type: ignore[union-attr]
        url = line.split()[2]
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the certificate names localhost, the URL 127.0.0.1
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz", ssl=context) as response:
                assert response.status == 200 and (await response.json())["status"] == "ok"
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not answered
                async with http.get(url.replace("https", "http") + "/healthz") as response:
                    await response.read()
    finally:
        server.terminate()
        server.wait(timeout=20)


async def test_ice_servers_with_turn_credentials_reach_the_page(start_server: StartServer) -> None:
    from stream_server.cli import build_parser, ice_server

    args = build_parser().parse_args(
        ["serve", "--ice-server", "stun:stun.example:3478", "--ice-server", "turn:turn.example:3478", "--turn-username", "u", "--turn-credential", "p"]
    )
    servers = [ice_server(url, args.turn_username, args.turn_credential) for url in args.ice_server]
    assert servers == [{"urls": "stun:stun.example:3478"}, {"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]
    live = await start_server(ice_servers=servers, token=TOKEN)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/config", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert (await response.json())["ice_servers"] == servers
        async with http.get(f"{live.url}/config") as response:  # TURN credentials only with the token
            assert response.status == 401
