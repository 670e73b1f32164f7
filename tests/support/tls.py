"""Throw-away TLS material made with the `openssl` CLI: a CA and a server certificate for 127.0.0.1."""

from __future__ import annotations

import subprocess
from pathlib import Path

#: The password of the TLS test server (conftest `tls_redis`).
TLS_PASSWORD = "s3cret-tls-Pw_0"
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """(CA certificate, CA key) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl(
        "req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt", directory / "ca.key"


def make_server_tls(directory: Path) -> tuple[Path, Path, Path]:
    """(server cert, server key, CA cert): a fresh CA signs a certificate for 127.0.0.1 and localhost."""
    ca_cert, _ = make_ca(directory, "codeforge-test-ca")
    openssl(
        "req", *EC_KEY, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory
    )
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
        cwd=directory,
    )  # fmt: skip
    return directory / "server.crt", directory / "server.key", ca_cert
