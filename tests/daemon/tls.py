"""Test certificates made with the openssl CLI: a CA and a server certificate for 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.broker import TlsFiles

__all__ = ["make_tls"]

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
# What a strict verifier (Python 3.13's VERIFY_X509_STRICT) wants of a server certificate.
_SERVER_EXTENSIONS = """\
subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30)


def make_tls(directory: Path, name: str = "ca") -> TlsFiles:
    """Write ``<name>.crt`` (a CA) and ``server.crt``/``server.key`` it signed into
    ``directory``; the server certificate is valid for 127.0.0.1 and localhost for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}.crt", directory / f"{name}.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(_SERVER_EXTENSIONS)
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", f"/CN=edgert test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl("req", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return TlsFiles(ca=ca, cert=cert, key=key)
