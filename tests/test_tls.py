"""``localrt serve --ssl-certfile ... --ssl-keyfile ...``: https:// and wss:// from uvicorn's own TLS.

Clients that insist on ``wss://`` (the ``openai`` npm package's ``OpenAIRealtimeWS``; browsers, which need
a secure context for the microphone off localhost) need it. The test runs the real CLI entry point with a
self-signed certificate made here, over fake engines (no model is loaded): an HTTPS request, then a
realtime session over ``wss://`` with the official SDK, its events checked by the strict harness.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from localrt import app as app_module
from localrt import cli
from localrt.serving import free_port
from tests.realtime import strict_events
from tests.realtime.rt_fakes import FakeEngines


def self_signed(folder: Path) -> tuple[Path, Path]:
    """What ``openssl req -x509 ... -subj /CN=localhost -addext subjectAltName=...`` makes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """``localrt serve`` with TLS flags, in a thread, over fake engines; yields its https URL and CA."""
    certfile, keyfile = self_signed(tmp_path)
    servers: list[uvicorn.Server] = []
    server_init = uvicorn.Server.__init__

    def recorded(self: uvicorn.Server, *args: Any, **kwargs: Any) -> None:  # whatever subclass serve() uses
        server_init(self, *args, **kwargs)
        servers.append(self)

    real_create_app = app_module.create_app
    monkeypatch.setattr(uvicorn.Server, "__init__", recorded)
    monkeypatch.setattr(app_module, "create_app", lambda settings: real_create_app(settings, FakeEngines()))  # type: ignore[arg-type]
    port = free_port()
    argv = ["serve", "--port", str(port), "--log-level", "warning", "--models-dir", str(tmp_path)]
    argv += ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
    thread = threading.Thread(target=cli.main, args=(argv,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (servers and servers[0].started):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"https://localhost:{port}", certfile
    finally:
        servers[0].should_exit = True
        thread.join(timeout=30)


@pytest.mark.anyio
async def test_https_and_wss(tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca = tls_server
    trust = ssl.create_default_context(cafile=str(ca))
    recorder = strict_events.install(monkeypatch)

    async with httpx.AsyncClient(verify=trust) as http:
        resp = await http.get(url + "/v1/nothing-here")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.TransportError):  # no plain HTTP on that port
            await plain.get(url.replace("https://", "http://") + "/v1/nothing-here")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await plain.get(url + "/v1/nothing-here")  # and not trusted without its certificate

    # The SDK maps an https:// base URL to wss:// itself; the CA goes to websockets.connect.
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    options: Any = {"ssl": trust}
    async with client.realtime.connect(model="gpt-realtime", websocket_connection_options=options) as conn:
        first = await conn.recv()
        assert first.type == "session.created"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        )
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                assert event.response.status == "completed"
                break
    await client.close()
    assert recorder.checked > 5 and not recorder.failures


def test_a_key_without_a_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--ssl-keyfile needs --ssl-certfile"):
        cli.main(["serve", "--models-dir", str(tmp_path), "--ssl-keyfile", str(tmp_path / "key.pem")])
