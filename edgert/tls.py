"""The TLS context of a connection to the broker, from ``[broker]``'s files (no MQTT library:
:mod:`edgert.mqtt` hands it to the client)."""

from __future__ import annotations

import ssl

from edgert.errors import ConfigError
from edgert.settings import BrokerConfig

__all__ = ["tls_context"]


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho (2.2) drops such a socket unclosed on every
    failed attempt (an untrusted or expired certificate), leaving it to the garbage collector."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _TlsContext(ssl.SSLContext):
    sslsocket_class = _ClosingSSLSocket


def tls_context(config: BrokerConfig) -> ssl.SSLContext:
    """What paho's ``tls_set`` builds (server certificate and host name verified against
    ``ca_file``, else the system's CAs; an optional client certificate), with unreadable files
    as a ConfigError naming them."""
    context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if config.ca_file is not None:
            context.load_verify_locations(config.ca_file)
        else:
            context.load_default_certs()
        if config.cert_file is not None:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(
            f"{name} {path}"
            for name, path in (
                ("ca_file", config.ca_file),
                ("cert_file", config.cert_file),
                ("key_file", config.key_file),
            )
            if path is not None
        )
        raise ConfigError(f"broker TLS files ({files or 'system CAs'}): {exc}") from exc
    return context
