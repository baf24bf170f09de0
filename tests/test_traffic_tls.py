"""TlsClient (traffic/tls.py) against a server-side ssl.SSLObject in memory: no socket, no clock.

The server side is Python's ssl with a trustme certificate; bytes are moved between the two by
hand, as the traffic client's loop moves them between the socket and the codec.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from loopfan.traffic.http import HttpClient, request_template
from loopfan.traffic.tally import Tally
from loopfan.traffic.tls import TlsClient, TlsFacts, client_context
from loopfan.traffic.ws import WsClient

trustme = pytest.importorskip("trustme")

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class CA:
    """A test CA, the server's certificate for 127.0.0.1 and localhost, and the CA's PEM file."""

    def __init__(self, tmp: Any, *names: str) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
        self.pem = str(tmp / "ca.pem")
        self.ca.cert_pem.write_to_path(self.pem)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.configure_cert(ctx)
        return ctx


@pytest.fixture
def ca(tmp_path: Any) -> Iterator[CA]:
    yield CA(tmp_path)


class Server:
    """The server end of one connection, sans I/O."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outg, server_side=True)
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Ciphertext from the client -> the server's ciphertext answer (handshake flights)."""
        self.inc.write(data)
        if not self.done:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                pass  # (the client refused us: its alert is what the test looks at)
        return self.outg.read()

    def read(self) -> bytes:
        out = b""
        try:
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                out += chunk
        except ssl.SSLWantReadError:
            pass
        return out

    def send(self, plain: bytes) -> bytes:
        self.obj.write(plain)
        return self.outg.read()


def http_codec(tally: Tally) -> HttpClient:
    return HttpClient(request_template("GET", "/", "127.0.0.1:443", (), b""), tally)


def shake(client: TlsClient, server: Server, rounds: int = 4) -> None:
    """Move the handshake's flights both ways until neither side has anything to say."""
    to_server = client.opening()
    for _ in range(rounds):
        to_client = server.feed(to_server)
        if not to_client:
            return
        client.feed(to_client)
        to_server, client.out = client.out, b""
        if client.dead is not None:
            server.feed(to_server)  # (the alert)
            return


def test_http_over_tls_handshakes_then_talks(ca: CA) -> None:
    tally, facts = Tally(), TlsFacts()
    client = TlsClient(http_codec(tally), client_context(ca.pem, True), "127.0.0.1", tally, facts)
    server = Server(ca.server_context())
    assert not client.ready and not client.fast and client.handshake_timeout == "tls-handshake-timeout"
    shake(client, server)
    assert client.ready and client.dead is None and tally.statuses == {"tls-handshake-ok": 1}
    assert facts.version.startswith("TLSv1.") and facts.cipher
    sealed = client.message()
    assert b"GET /" not in sealed  # (ciphertext on the wire)
    tickets = server.feed(sealed)  # (TLS 1.3 session tickets, if any: the client reads them first)
    assert server.read().startswith(b"GET / HTTP/1.1\r\n")
    # A response split over two reads, and two in one: counted as the plain codec counts them.
    wire = tickets + server.send(RESPONSE)
    assert client.feed(wire[:10]) == 0
    assert client.feed(wire[10:]) == 1 and not client.partial
    server.feed(client.message() + client.message())
    server.read()
    assert client.feed(server.send(RESPONSE) + server.send(RESPONSE)) == 2
    # A whole record and the start of the next: the first is counted, the second when it completes.
    server.feed(client.message() + client.message())
    server.read()
    first, second = server.send(RESPONSE), server.send(RESPONSE)
    assert client.feed(first + second[:7]) == 1 and client.dead is None
    assert client.feed(second[7:]) == 1
    assert tally.statuses["http-2xx"] == 5 and not tally.errors


def test_an_untrusted_certificate_is_counted_with_what_openssl_said(ca: CA, tmp_path: Any) -> None:
    other = CA(tmp_path / "..")  # another CA: the server's certificate is not signed by it
    tally, facts = Tally(), TlsFacts()
    client = TlsClient(http_codec(tally), client_context(other.pem, True), "127.0.0.1", tally, facts)
    shake(client, Server(ca.server_context()))
    assert client.dead == "tls-cert-verify-failed" and not client.ready
    assert "unable to get local issuer certificate" in facts.verify_error
    assert "tls-handshake-ok" not in tally.statuses


def test_an_address_is_checked_against_the_ip_sans(ca: CA) -> None:
    # The certificate is for 127.0.0.1 (and localhost): the same CA, another address -> refused.
    facts = TlsFacts()
    client = TlsClient(http_codec(Tally()), client_context(ca.pem, True), "127.0.0.2", Tally(), facts)
    shake(client, Server(ca.server_context()))
    assert client.dead == "tls-cert-verify-failed" and "IP address mismatch" in facts.verify_error
    named = TlsClient(http_codec(Tally()), client_context(ca.pem, True), "localhost", Tally())
    shake(named, Server(ca.server_context()))
    assert named.ready


def test_sni_is_the_host_name_and_none_for_an_address(ca: CA) -> None:
    seen: list[str | None] = []
    ctx = ca.server_context()
    ctx.sni_callback = lambda _obj, name, _ctx: seen.append(name)  # type: ignore[assignment,func-returns-value]
    for name in ("localhost", "127.0.0.1"):
        client = TlsClient(http_codec(Tally()), client_context(ca.pem, True), name, Tally())
        shake(client, Server(ctx))
        assert client.ready
    assert seen == ["localhost", None]  # (RFC 6066: no address in SNI)


def test_insecure_verifies_nothing(ca: CA, tmp_path: Any) -> None:
    other = CA(tmp_path / "..")
    client = TlsClient(http_codec(Tally()), client_context(other.pem, False), "127.0.0.9", Tally())
    shake(client, Server(ca.server_context()))
    assert client.ready and client.dead is None


def test_a_server_that_does_not_speak_tls(ca: CA) -> None:
    client = TlsClient(http_codec(Tally()), client_context(ca.pem, True), "127.0.0.1", Tally())
    client.opening()
    assert client.feed(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") == 0
    assert client.dead == "tls-handshake-failed" and client.closed_in_handshake == "tls-handshake-failed"
    assert client.facts.error.startswith("WRONG_VERSION_NUMBER (the server's answer is not TLS: a plain-text port, ")


def test_websocket_opening_follows_the_tls_handshake(ca: CA) -> None:
    tally = Tally()
    inner = WsClient("127.0.0.1:443", "/", b"hi", "text", tally)
    client = TlsClient(inner, client_context(ca.pem, True), "127.0.0.1", tally)
    server = Server(ca.server_context())
    to_server = client.opening()
    while not client.secure:
        client.feed(server.feed(to_server))
        to_server, client.out = client.out, b""
    # The WebSocket handshake went out sealed with the TLS handshake's last flight.
    assert not client.ready and client.handshake_timeout == "ws-handshake-timeout"
    tickets = server.feed(to_server)  # (TLS 1.3 session tickets: the client reads them in order)
    request = server.read()
    assert request.startswith(b"GET / HTTP/1.1") and b"Upgrade: websocket" in request
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(request)
    assert isinstance(next(ws.events()), Request)
    assert client.feed(tickets + server.send(ws.send(AcceptConnection()))) == 0
    assert client.ready and tally.statuses["ws-handshake-ok"] == 1
    server.feed(client.message())
    ws.receive_data(server.read())
    assert [type(e).__name__ for e in ws.events()] == ["TextMessage"]
    goodbye = client.goodbye()
    server.feed(goodbye)
    assert server.read().startswith(b"\x88")  # the close frame, then close_notify


def mtls_server(ca: CA, version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> Server:
    """A server that requires a client certificate signed by the test CA (nginx ssl_verify_client on)."""
    ctx = ca.server_context()
    ctx.maximum_version = version
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.ca.configure_trust(ctx)
    return Server(ctx)


def test_a_client_certificate_is_offered_to_a_server_that_asks(ca: CA, tmp_path: Any) -> None:
    both, cert, key = (str(tmp_path / n) for n in ("both.pem", "cert.pem", "key.pem"))
    issued = ca.ca.issue_cert("client@example.test")
    issued.private_key_and_cert_chain_pem.write_to_path(both)
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    for certfile, keyfile in ((both, None), (cert, key)):
        client = TlsClient(http_codec(Tally()), client_context(ca.pem, True, certfile, keyfile), "127.0.0.1", Tally())
        server = mtls_server(ca)
        shake(client, server)
        server.feed(client.message())
        assert client.ready and client.dead is None and server.obj.getpeercert()


@pytest.mark.parametrize(("version", "cause", "reason"), [
    # TLS 1.3: the client's side of the handshake is done before the server checks; the alert follows.
    (ssl.TLSVersion.TLSv1_3, "tls-error", "TLSV13_ALERT_CERTIFICATE_REQUIRED (the server requires a client "
                                          "certificate: give it with --cert FILE)"),
    (ssl.TLSVersion.TLSv1_2, "tls-handshake-failed", "SSLV3_ALERT_HANDSHAKE_FAILURE (the server refused the "
                                                     "handshake: no cipher or group both accept, or it requires"),
])
def test_a_server_that_wants_a_client_certificate_says_so_in_the_facts(
        ca: CA, version: ssl.TLSVersion, cause: str, reason: str) -> None:
    server = mtls_server(ca, version)
    facts = TlsFacts()
    client = TlsClient(http_codec(Tally()), client_context(ca.pem, True), "127.0.0.1", Tally(), facts)
    shake(client, server)
    assert client.dead == cause and facts.error.startswith(reason)
    assert facts.as_dict()["error"] == facts.error and not facts.verify_error
