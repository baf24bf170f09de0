"""bench/http_nginx.py --tls: the nginx config, the certificate and the TLS/plain summary. Nothing
is timed here (tests never time anything); the one loopfan run is refused before it starts."""

from __future__ import annotations

import importlib
import ipaddress
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # (the script imports its sibling `_runs` by name)
    for name in ("http_nginx", "_runs"):
        sys.modules.pop(name, None)
    return importlib.import_module("http_nginx")


def test_without_tls_the_nginx_config_is_the_plain_one(bench: ModuleType) -> None:
    """The default run must measure what it always measured: no ssl listener, nothing else added."""
    plain = bench.CONF.replace("{tls}", "").format(d="/x")
    assert "ssl" not in plain
    assert plain.count("listen ") == 1
    tls = bench.CONF.replace("{tls}", bench.TLS_LISTEN).format(d="/x")
    assert "listen 127.77.0.1:18443 ssl" in tls and "TLSv1.3" in tls
    assert "ssl_certificate /x/server.pem;" in tls and "ssl_certificate_key /x/server.key;" in tls
    assert bench.TLS_URL == "https://127.77.0.1:18443/"


@pytest.mark.parametrize(("key", "kind"), [("ecdsa", ec.EllipticCurvePublicKey), ("rsa", rsa.RSAPublicKey)])
def test_the_certificate_names_the_listeners_address_with_the_key_type_asked(
        bench: ModuleType, key: str, kind: type) -> None:
    files = bench.tls_files(key)
    assert set(files) == {"ca.pem", "server.pem", "server.key"}
    cert = x509.load_pem_x509_certificate(files["server.pem"])
    ca = x509.load_pem_x509_certificate(files["ca.pem"])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(bench.TLS_ADDRESS)]
    assert cert.issuer == ca.subject
    assert isinstance(cert.public_key(), kind)
    assert key in bench.KEY_TYPES


def test_tls_summary_gives_ratios_of_medians_and_the_handshake_estimate(bench: ModuleType) -> None:
    results = {(100, "loopfan"): [100_000.0, 120_000.0, 110_000.0],
               (100, "loopfan TLS"): [44_000.0, 55_000.0, 50_000.0], (100, "wrk"): [90_000.0]}
    cpu = {(100, "loopfan"): [10.0], (100, "loopfan TLS"): [30.0]}
    beyond = {(100, "loopfan"): [0.04], (100, "loopfan TLS"): [0.14]}
    lines = bench.tls_summary(100, "loopfan", results, cpu, beyond)
    assert lines[0] == "-c 100 loopfan TLS/plain: req/s 0.45, client CPU per request 3.00 (30.0 / 10.0 us)"
    assert "0.14 s beyond warm-up + window (plain 0.04 s): ~0.10 s for 100 handshakes" in lines[1]
    assert bench.tls_summary(100, "wrk", results, cpu, beyond) == []  # (no TLS run: nothing to say)


def test_a_refused_loopfan_run_is_a_line_with_its_reason(bench: ModuleType) -> None:
    """An --against tree older than https:// refuses it: the round goes on, the line says why."""
    m = bench.loopfan(10, 1, None, "before TLS", bench.TLS_URL, ("--cacert", "/nonexistent/ca.pem"))
    assert m.rate == 0.0 and m.cpu_us is None
    assert m.line.startswith("before TLS -c 10: failed, no report: ") and "--cacert" in m.line
