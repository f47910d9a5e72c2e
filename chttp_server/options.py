"""The receiver's options, checked once for every front end that takes them.

The WSGI and the ASGI ``CertifiedMiddleware`` take the same keyword options with the
same meanings (docs/protocol.rst §4); a mistake in one is a :class:`ConfigurationError`
at construction time, with the same words, whichever front end was given it.
"""

from __future__ import annotations

from datetime import timedelta

from chttp_server.errors import ConfigurationError

__all__ = ["check_receiver_options"]


def check_receiver_options(
    *,
    retention: timedelta,
    claim_timeout: float,
    max_response_bytes: int,
    max_request_bytes: int,
    message_prefix: str,
    retry_after: int,
    handler_send_deadline: timedelta | None,
) -> None:
    """Raise :class:`ConfigurationError` for the first option that cannot work."""
    if retention <= timedelta(0):
        raise ConfigurationError("retention must be positive")
    if claim_timeout <= 0:
        raise ConfigurationError("claim_timeout must be positive")
    if max_response_bytes < 0:
        raise ConfigurationError("max_response_bytes must not be negative")
    if max_request_bytes < 0:
        raise ConfigurationError("max_request_bytes must not be negative")
    if not (message_prefix.startswith("/") and message_prefix.endswith("/")):
        raise ConfigurationError("message_prefix must start and end with '/'")
    if retry_after < 0:
        raise ConfigurationError("retry_after must not be negative")
    if handler_send_deadline is not None and handler_send_deadline <= timedelta(0):
        raise ConfigurationError("handler_send_deadline must be positive (or None)")
