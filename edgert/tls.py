"""The TLS context of a connection to the broker, from ``[broker]``'s files (no MQTT library:
:mod:`edgert.transport` hands it to the event loop's connection)."""

from __future__ import annotations

import ssl

from edgert.errors import ConfigError
from edgert.settings import BrokerConfig

__all__ = ["tls_context"]


def tls_context(config: BrokerConfig) -> ssl.SSLContext:
    """What MQTT clients build (server certificate and host name verified against
    ``ca_file``, else the system's CAs; an optional client certificate), with unreadable files
    as a ConfigError naming them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
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
