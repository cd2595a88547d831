from __future__ import annotations

from prefixgate.core.secrets import (
    CREDENTIAL_HEADERS,
    REDACTED,
    redact_bytes,
    redact_text,
    secret_values,
)


def test_secret_values_drop_short_and_empty_values_and_put_the_longest_first() -> None:
    assert secret_values([None, "", "abc", "sk-123456", "sk-123456-longer"]) == (
        "sk-123456-longer",
        "sk-123456",
    )


def test_every_occurrence_is_redacted_in_text_and_bytes() -> None:
    secrets = secret_values(["sk-123456", "sk-123456-longer"])
    text = "key sk-123456-longer then sk-123456 and sk-123456"
    assert redact_text(text, secrets) == f"key {REDACTED} then {REDACTED} and {REDACTED}"
    assert redact_bytes(text.encode(), secrets) == redact_text(text, secrets).encode()
    assert redact_bytes(b"nothing here", secrets) == b"nothing here"
    assert redact_text("nothing", ()) == "nothing"


def test_the_credential_headers_are_lower_case_and_include_the_known_ones() -> None:
    assert all(name == name.lower() for name in CREDENTIAL_HEADERS)
    assert {"authorization", "x-api-key", "api-key", "x-goog-api-key", "anthropic-api-key"} <= (
        CREDENTIAL_HEADERS
    )
