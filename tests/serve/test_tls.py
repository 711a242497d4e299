"""``danlu serve --tls-cert --tls-key``: a real uvicorn server on 127.0.0.1 speaking HTTPS with a
self-signed certificate made here; a client that trusts it gets answers, one that does not is
refused; the server's deployment entry says https; bad TLS options are clear errors."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from pathlib import Path

import httpx
import pytest

from danlu import pipeline
from danlu.errors import ConfigError
from danlu.serve import ServeSettings
from danlu.serve._beacon import deployment_url
from danlu.serve._server import build_app, check_tls
from danlu.store import SqlStore
from tests.cli._runner import danlu
from tests.serve.conftest import running_server

WINE = {
    "name": "w",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 1, "checkpoint": {"every": 0}},
    "register": {"name": "wine"},
}


def _certificate(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
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
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("tls")
    store = SqlStore(home=home)
    try:
        pipeline.run(WINE, store=store, home=home)
    finally:
        store.close()
    return home


def test_https_round_trip_with_a_self_signed_certificate(home, tmp_path, monkeypatch) -> None:
    cert, key = _certificate(tmp_path)
    settings = ServeSettings(
        models=("wine:1",),
        port=0,  # an ephemeral port, registered once bound
        max_wait_ms=1.0,
        poll_seconds=0.0,
        tls_certfile=str(cert),
        tls_keyfile=str(key),
        extra={"register": True},  # the deployments-table entry, as `danlu serve` makes it
    )
    check_tls(settings)
    app = build_app(settings, lambda: SqlStore(home=home))
    with running_server(app, settings) as (_, plain_url):
        url = plain_url.replace("http://", "https://")
        trusting = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=url, verify=trusting, timeout=10, trust_env=False) as http:
            assert http.get("/readyz").status_code == 200
            inputs = http.get("/v1/models/wine").json()["signature"]["inputs"]
            row = {field["name"]: 1.0 for field in inputs}
            answer = http.post("/v1/models/wine/predict", json={"rows": [row]})
            assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
        # a client that does not trust the certificate is refused (the system's CAs only)
        with (
            httpx.Client(base_url=url, timeout=10, trust_env=False) as http,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            http.get("/readyz")
        # nor does the server answer plain HTTP
        with (
            httpx.Client(base_url=plain_url, timeout=10, trust_env=False) as http,
            pytest.raises(httpx.HTTPError),
        ):
            assert http.get("/readyz").status_code != 200
        # the server registered itself under its https URL
        store = SqlStore(home=home)
        try:
            deadline = time.monotonic() + 20
            urls: list[str] = []
            while time.monotonic() < deadline and not urls:
                urls = [d.url for d in store.list_deployments() if d.status() == "live"]
                time.sleep(0.05)
            assert urls == [url]
            # the dashboard reads its /metrics over https when told which certificate to trust
            pytest.importorskip("jinja2")
            from tests.ui.conftest import serve as serve_ui

            def scraped() -> dict:
                with serve_ui(store) as ui:
                    listed = httpx.get(ui + "/api/deployments", timeout=20).json()
                return next(d for d in listed["deployments"] if d["url"] == url)["stats"]

            assert "error" in scraped()  # the system's CAs do not know a self-signed one
            monkeypatch.setenv("DANLU_UI_SCRAPE_CA", str(cert))
            stats = scraped()
            assert "error" not in stats and stats["requests"] >= 1, stats
            monkeypatch.setenv("DANLU_UI_SCRAPE_CA", str(tmp_path / "absent.pem"))
            assert "DANLU_UI_SCRAPE_CA" in scraped()["error"]
        finally:
            store.close()


def test_deployment_url_scheme() -> None:
    plain = ServeSettings(models=())
    tls = ServeSettings(models=(), tls_certfile="c.pem", tls_keyfile="k.pem")
    assert deployment_url(plain, 8000) == "http://127.0.0.1:8000"
    assert deployment_url(tls, 8443) == "https://127.0.0.1:8443"


def test_bad_tls_options_are_clear_errors(tmp_path) -> None:
    cert, key = _certificate(tmp_path)
    _, other_key = _certificate(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        ({"tls_certfile": str(cert)}, "--tls-cert was given without --tls-key"),
        ({"tls_keyfile": str(key)}, "--tls-key was given without --tls-cert"),
        (
            {"tls_certfile": str(tmp_path / "absent.crt"), "tls_keyfile": str(key)},
            "--tls-cert '.*absent.crt' cannot be read",
        ),
        (
            {"tls_certfile": str(cert), "tls_keyfile": str(tmp_path)},
            "--tls-key '.*' cannot be read",
        ),
        ({"tls_certfile": str(cert), "tls_keyfile": str(other_key)}, "the certificate's own"),
        ({"tls_certfile": str(garbage), "tls_keyfile": str(key)}, "must be PEM"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_tls(ServeSettings(models=(), **change))


def test_the_cli_refuses_half_a_tls_setting(home, tmp_path, monkeypatch) -> None:
    cert, _ = _certificate(tmp_path)
    monkeypatch.setenv("DANLU_HOME", str(home))
    outcome = danlu("serve", "wine:1", "--tls-cert", str(cert))
    assert outcome.code != 0
    assert "--tls-cert was given without --tls-key" in outcome.stderr
