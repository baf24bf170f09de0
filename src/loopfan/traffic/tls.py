"""TLS under a traffic codec, sans I/O: ssl.SSLObject over two ssl.MemoryBIOs.

Rules of this file: TlsClient wraps one connection's codec (HttpClient or WsClient) and offers the
same face the traffic client's loop uses - feed(ciphertext) -> replies, opening(), message(),
goodbye(), out, dead, ready, partial - so the loop reads the socket and writes bytes exactly as it
does in plain text. Ciphertext goes in (incoming BIO), plaintext comes out to the inner codec; the
inner codec's bytes are sealed (outgoing BIO) before they leave. The TLS handshake is the
connection's opening: the inner codec's own opening (the WebSocket handshake) follows it, and the
connection is ready once both are done. `fast` is False for good: the quick paths compare a read
with the last reply and resend the same request bytes, and ciphertext never repeats - so TLS
connections never reach them and the plain-text paths pay nothing for TLS.

Failures are data, as for the other codecs: `dead` names the cause (tls-cert-verify-failed,
tls-handshake-failed, tls-error) and the report gives each its meaning and fix; the first failure's
OpenSSL reason (which alert) goes to TlsFacts, since one cause covers many reasons.
"""

from __future__ import annotations

import ssl
from typing import Any

from loopfan.traffic.tally import Tally

_READ = 65536
# Names the traffic report explains (traffic/report.py MEANINGS).
CERT_VERIFY_FAILED = "tls-cert-verify-failed"
HANDSHAKE_FAILED = "tls-handshake-failed"
HANDSHAKE_TIMEOUT = "tls-handshake-timeout"
TLS_ERROR = "tls-error"  # a TLS record the session refused after the handshake (garbage, a bad MAC)


class EncryptedKey(Exception):
    """The client key asks for a passphrase: a worker cannot type one (the CLI says how to decrypt it)."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, in every worker process.
    raise EncryptedKey


def client_context(cafile: str | None, verify: bool, certfile: str | None = None,
                   keyfile: str | None = None) -> ssl.SSLContext:
    """The client side's context, one per worker: the system CAs (or only `cafile`'s, as curl's
    --cacert) and the name checked; with verify False nothing is (--insecure). `certfile` (with
    `keyfile`, or its key in the same PEM) is the client certificate offered to a server that asks
    for one (mTLS, curl's --cert/--key). Raises OSError, ssl.SSLError or EncryptedKey for a file that
    is not readable, unencrypted PEM (the CLI checks them first, with a fix)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    return ctx


_PLAIN = "the server's answer is not TLS: a plain-text port, for an http:// or ws:// URL?"
# OpenSSL's reason codes that say more than the cause does, with what they mean here. The code is
# what a server's error log and a search engine know; the words say what to do.
_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate: give it with --cert FILE",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake: no cipher or group both accept, or it "
                                     "requires a client certificate (--cert FILE)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both accept (this client offers TLS 1.2 and 1.3)",
    "UNSUPPORTED_PROTOCOL": "no TLS version both accept (this client offers TLS 1.2 and 1.3)",
    "WRONG_VERSION_NUMBER": _PLAIN,
    "RECORD_LAYER_FAILURE": _PLAIN,
    "PACKET_LENGTH_TOO_LONG": _PLAIN,
    "TLSV1_ALERT_UNRECOGNIZED_NAME": "the server has no certificate for the name sent as SNI (the URL's host)",
}


def error_words(exc: ssl.SSLError) -> str:
    """An SSLError as the report says it: OpenSSL's reason code, and what it means when we know."""
    reason = str(exc.reason or exc)
    meaning = _REASONS.get(reason)
    return f"{reason} ({meaning})" if meaning else reason


class TlsFacts:
    """What the first completed handshake of a worker agreed (the report's "tls" block), the first
    verification failure's words (which name or issuer did not match), and the first other TLS
    failure's (an alert's reason: why tls-handshake-failed or tls-error)."""

    __slots__ = ("cipher", "error", "verify_error", "version")

    def __init__(self) -> None:
        self.version = ""
        self.cipher = ""
        self.verify_error = ""
        self.error = ""

    def failed(self, exc: ssl.SSLError) -> None:
        if not self.error:
            self.error = error_words(exc)

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("version", self.version), ("cipher", self.cipher),
                                  ("verify_error", self.verify_error), ("error", self.error)) if v}


class TlsClient:
    """One connection's TLS session around its codec (see the module docstring)."""

    __slots__ = ("_in", "_out", "dead", "facts", "inner", "obj", "out", "secure", "tally")

    fast = False  # never the quick paths: ciphertext never repeats
    repeat = b""
    buf = b""

    def __init__(self, inner: Any, context: ssl.SSLContext, server_name: str, tally: Tally,
                 facts: TlsFacts | None = None) -> None:
        self.inner = inner
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        # server_hostname is both the SNI and the name verified. An address (127.0.0.1, ::1) is sent
        # as no SNI (RFC 6066 3 allows no literal addresses) and checked against the certificate's
        # IP SANs - Python's ssl does both for an address given here, as curl does.
        self.obj = context.wrap_bio(self._in, self._out, server_side=False, server_hostname=server_name)
        self.tally = tally
        self.facts = facts if facts is not None else TlsFacts()
        self.secure = False  # the TLS handshake is done
        self.dead: str | None = None
        self.out = b""  # sealed bytes to send: handshake flights, the inner codec's answers

    @property
    def ready(self) -> bool:
        return self.secure and bool(self.inner.ready)

    @property
    def partial(self) -> bool:
        return bool(self.inner.partial)

    @property
    def handshake_timeout(self) -> str:
        """The cause when the opening does not complete in time: the TLS one, or the inner codec's."""
        return str(self.inner.handshake_timeout) if self.secure else HANDSHAKE_TIMEOUT

    @property
    def closed_in_handshake(self) -> str:
        """The cause when the server closes during the opening."""
        return str(self.inner.closed_in_handshake) if self.secure else HANDSHAKE_FAILED

    def opening(self) -> bytes:
        """The ClientHello: the first flight of the handshake (the rest comes through feed)."""
        self._shake()
        return self._out.read()

    def message(self) -> bytes:
        return self._seal(self.inner.message())

    def goodbye(self) -> bytes:
        """The inner codec's goodbye (a WebSocket close frame), then TLS close_notify."""
        data = self._seal(self.inner.goodbye()) if hasattr(self.inner, "goodbye") else b""
        try:
            self.obj.unwrap()
        except ssl.SSLError:  # (wants the peer's close_notify: ours is in the BIO already)
            pass
        except ValueError:  # (no handshake done: nothing to close)
            return data
        return data + self._out.read()

    def feed(self, data: bytes) -> int:
        """Ciphertext from the socket: drive the handshake, or decrypt and feed the inner codec.
        Returns the replies the inner codec completed."""
        self._in.write(data)
        if not self.secure:
            self._shake()
            if not self.secure or self.dead is not None:
                self.out += self._out.read()
                return 0
        # Read while ciphertext or decrypted bytes are left, not until SSLWantReadError: the usual
        # read is one whole record, and an exception per reply cost more than the decryption.
        obj = self.obj
        incoming = self._in
        plain = b""
        try:
            plain = obj.read(_READ)
            while incoming.pending or obj.pending():
                more = obj.read(_READ)
                if not more:
                    break
                plain += more
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass  # the rest of a record is still on its way; close_notify: the TCP close follows
        except ssl.SSLError as exc:  # (an alert: TLS 1.3 refuses a missing client certificate here)
            self.dead = TLS_ERROR
            self.facts.failed(exc)
        n = 0
        inner = self.inner
        if plain:
            n = inner.feed(plain)
            if inner.out:
                sealed, inner.out = inner.out, b""
                self.out += self._seal(sealed)
            if inner.dead is not None and self.dead is None:
                self.dead = inner.dead
        if self._out.pending:  # (post-handshake messages: session tickets, key updates, alerts)
            self.out += self._out.read()
        return n

    def _shake(self) -> None:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLCertVerificationError as exc:
            self.dead = CERT_VERIFY_FAILED
            if not self.facts.verify_error:
                self.facts.verify_error = str(exc.verify_message or exc.reason or exc)
            return
        except ssl.SSLError as exc:
            self.dead = HANDSHAKE_FAILED
            self.facts.failed(exc)
            return
        self.secure = True
        self.tally.status("tls-handshake-ok")
        facts = self.facts
        if not facts.version:
            facts.version = self.obj.version() or ""
            cipher = self.obj.cipher()
            facts.cipher = cipher[0] if cipher else ""
        # Ready for the inner codec's opening (the WebSocket handshake; HTTP has none).
        opening = self.inner.opening()
        if opening:
            self.out += self._out.read() + self._seal(opening)

    def _seal(self, plain: bytes) -> bytes:
        if not plain:
            return b""
        try:
            self.obj.write(plain)
        except ssl.SSLError:  # the session is over (an alert came): the read side says why
            return b""
        return self._out.read()
