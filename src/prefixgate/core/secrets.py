"""Secrets: which headers carry credentials, and keeping known secret values out of output.

``CREDENTIAL_HEADERS`` is the one list of request headers that carry a
credential. The gateway strips every one of them when it supplies the
upstream's credential itself, and never writes them to a capture.

``redact_text`` / ``redact_bytes`` replace each configured secret (an upstream's
API key, the password of its URL) wherever it occurs, with ``REDACTED``: an
upstream that echoes its own key in an answer or an error must not hand it to
a client, a log or the audit store. Values shorter than ``MIN_SECRET`` are not
searched for: they would mangle ordinary text and protect nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",  # Azure OpenAI
        "anthropic-api-key",
        "x-goog-api-key",  # Google AI / Vertex
        "ocp-apim-subscription-key",  # Azure API Management
        "x-amz-security-token",  # AWS temporary credentials
        "x-auth-token",
        "cookie",
    }
)
REDACTED = "[redacted]"
MIN_SECRET = 6


def secret_values(values: Iterable[str | None]) -> tuple[str, ...]:
    """The values worth searching for, longest first (so none hides inside another)."""
    kept = {v for v in values if v and len(v) >= MIN_SECRET}
    return tuple(sorted(kept, key=len, reverse=True))


def redact_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_bytes(data: bytes, secrets: tuple[str, ...]) -> bytes:
    for secret in secrets:
        raw = secret.encode("utf-8")
        if raw in data:
            data = data.replace(raw, REDACTED.encode())
    return data
