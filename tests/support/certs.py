"""Certificates for TLS tests, made with the ``openssl`` command (no Python dependency).

``make_pki(dir)`` writes a small public-key infrastructure for one test: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate, and the bad cases (an expired
server certificate, one for another host name, one signed by a CA nobody trusts). Keys are EC
P-256: fast to make, and every OpenSSL and Mosquitto speaks them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_SAN = "IP:127.0.0.1,DNS:localhost"
WRONG_HOST_SAN = "DNS:broker.example.org"

# `openssl ca` (used to set explicit validity dates) wants a config and a database.
_CA_CONFIG = """\
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
"""


@dataclass(frozen=True)
class CertKey:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Everything ``make_pki`` wrote, by role."""

    ca: CertKey  # the CA the gateway is told to trust
    server: CertKey  # valid, for 127.0.0.1 and localhost, signed by ``ca``
    client: CertKey  # a client certificate signed by ``ca`` (mTLS)
    expired: CertKey  # for 127.0.0.1, signed by ``ca``, valid only in January 2020
    wrong_host: CertKey  # valid, signed by ``ca``, but for broker.example.org only
    rogue_ca: CertKey  # a CA nobody trusts
    rogue_server: CertKey  # for 127.0.0.1, signed by ``rogue_ca``
    rogue_client: CertKey  # a client certificate signed by ``rogue_ca``


def _openssl(workdir: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=workdir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def make_ca(workdir: Path, name: str) -> CertKey:
    """A self-signed CA certificate valid for two days."""
    pair = CertKey(workdir / f"{name}.crt", workdir / f"{name}.key")
    _openssl(workdir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", pair.key.name, "-out", pair.cert.name,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return pair


def make_cert(workdir: Path, name: str, ca: CertKey, *, san: str | None, client: bool = False,
              dates: tuple[str, str] | None = None) -> CertKey:
    """A certificate signed by ``ca``: a server one for ``san``, or a client one.

    ``dates`` (``YYYYMMDDHHMMSSZ`` start and end) sets the validity explicitly (for an expired
    certificate); by default it is valid from now for two days.
    """
    pair = CertKey(workdir / f"{name}.crt", workdir / f"{name}.key")
    _openssl(workdir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", pair.key.name, "-out", f"{name}.csr")
    ext = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
    if san:
        ext.append(f"subjectAltName={san}")
    (workdir / f"{name}.ext").write_text("\n".join(ext) + "\n")
    if dates is None:
        _openssl(workdir, "x509", "-req", "-in", f"{name}.csr", "-CA", ca.cert.name, "-CAkey", ca.key.name,
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", pair.cert.name)
    else:
        (workdir / "ca.cnf").write_text(_CA_CONFIG)
        (workdir / "index.txt").touch()
        if not (workdir / "serial").exists():
            (workdir / "serial").write_text("1000\n")
        _openssl(workdir, "ca", "-batch", "-config", "ca.cnf", "-cert", ca.cert.name, "-keyfile", ca.key.name,
                 "-in", f"{name}.csr", "-out", pair.cert.name, "-startdate", dates[0], "-enddate", dates[1],
                 "-extfile", f"{name}.ext", "-notext")
    return pair


def make_pki(workdir: Path) -> Pki:
    """Write the test PKI into ``workdir`` (created if missing)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = make_ca(workdir, "ca")
    rogue_ca = make_ca(workdir, "rogue-ca")
    return Pki(
        ca=ca,
        server=make_cert(workdir, "server", ca, san=SERVER_SAN),
        client=make_cert(workdir, "client", ca, san=None, client=True),
        expired=make_cert(workdir, "expired", ca, san=SERVER_SAN, dates=("20200101000000Z", "20200102000000Z")),
        wrong_host=make_cert(workdir, "wrong-host", ca, san=WRONG_HOST_SAN),
        rogue_ca=rogue_ca,
        rogue_server=make_cert(workdir, "rogue-server", rogue_ca, san=SERVER_SAN),
        rogue_client=make_cert(workdir, "rogue-client", rogue_ca, san=None, client=True),
    )


def tls_listener(port: int, ca: Path, server: CertKey, *, require_certificate: bool = False) -> str:
    """Mosquitto config lines for a TLS listener on 127.0.0.1:``port`` (append to its config)."""
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {ca}",
        f"certfile {server.cert}",
        f"keyfile {server.key}",
    ]
    if require_certificate:
        lines += ["require_certificate true", "use_identity_as_username false"]
    return "\n".join(lines) + "\n"
