"""TLS to the broker: a context that always verifies, and OpenSSL's failures in plain words."""

from __future__ import annotations

import re
import ssl

from gateway.config.settings import TlsSection


def tls_context(tls: TlsSection) -> ssl.SSLContext:
    """A client TLS context that always verifies the server certificate and host name."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.cert_file is not None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


_SSL_ERROR = re.compile(r"\[SSL: (?P<code>\w+)\] (?P<text>.*?)\.? \(_ssl\.c:\d+\)")


def tls_reason(message: str) -> str:
    """``message`` with OpenSSL's words for a failed TLS handshake made plain, e.g.
    ``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)``
    -> ``TLS: the broker's certificate was rejected: certificate has expired``."""
    def plain(match: re.Match[str]) -> str:
        code, text = match["code"], match["text"]
        if code == "CERTIFICATE_VERIFY_FAILED":
            text = text.removeprefix("certificate verify failed: ")
            if "issuer" in text or "self-signed" in text or "self signed" in text:
                text += " (not signed by a CA of mqtt.tls.ca_file, or of the system when ca_file is not set)"
            return f"TLS: the broker's certificate was rejected: {text}"
        if code.endswith("ALERT_CERTIFICATE_REQUIRED"):
            return "TLS: the broker requires a client certificate (mqtt.tls.cert_file and key_file)"
        if "ALERT" in code:
            return f"TLS: the broker refused the handshake: {text}"
        return f"TLS: {text}"

    return _SSL_ERROR.sub(plain, message)
