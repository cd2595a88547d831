"""The attribution block as an HTTP request header: detection and the policies."""

from __future__ import annotations

import pytest

from prefixgate.core.attribution import (
    HEADER_NAME,
    HeaderAttribution,
    detect_headers,
    parse_header_value,
)
from prefixgate.core.headers import (
    apply_header_policy,
    attribution_header_names,
    rewrite_headers,
)
from prefixgate.core.policy import METADATA_HEADER, Policy

KV = "cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli; cch=fa690;"
FIELDS = {"cc_version": "2.1.332.0b8", "cc_entrypoint": "sdk-cli", "cch": "fa690"}


# -- parse_header_value / detect_headers ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "form", "fields"),
    [
        (KV, "kv", FIELDS),
        ("cc_version=2.1.332.0b8; cc_entrypoint=cli", "kv", {
            "cc_version": "2.1.332.0b8", "cc_entrypoint": "cli"}),
        (f"  {KV}  ", "kv", FIELDS),
        (f"{HEADER_NAME}: {KV}", "kv", FIELDS),  # the whole line as the value
        ('{"cc_is_subagent":true,"cc_version":"2.1.332.1f2"}', "json", {
            "cc_is_subagent": True, "cc_version": "2.1.332.1f2"}),
        ("cc_entrypoint=cli;and more", "unparsed", {}),  # glued text: not one header
        ("hello world", "unparsed", {}),
        ("", "unparsed", {}),
        ("[1, 2]", "unparsed", {}),
    ],
)  # fmt: skip
def test_parse_header_value(value: str, form: str, fields: dict[str, object]) -> None:
    assert parse_header_value(value) == (form, fields)


def test_detect_headers_by_name_any_case_in_order() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("X-Anthropic-Billing-Header", KV),
        ("x-prefixgate-attribution", "cc_entrypoint=cli;"),
        ("x-other", KV),
    ]
    found = detect_headers(headers, attribution_header_names())
    assert found == (
        HeaderAttribution(HEADER_NAME, KV, "kv", FIELDS),
        HeaderAttribution(METADATA_HEADER, "cc_entrypoint=cli;", "kv", {"cc_entrypoint": "cli"}),
    )
    assert detect_headers(headers) == found[:1]  # only the billing header by default


def test_a_header_of_that_name_is_attribution_whatever_its_value() -> None:
    (found,) = detect_headers([(HEADER_NAME, "garbage value")])
    assert (found.form, found.fields) == ("unparsed", {})
    assert found.record() == {"form": "unparsed", "fields": {}}


def test_configured_metadata_header_name_is_detected_too() -> None:
    assert attribution_header_names("X-Gw-Attr") == (HEADER_NAME, METADATA_HEADER, "x-gw-attr")
    assert attribution_header_names(METADATA_HEADER) == (HEADER_NAME, METADATA_HEADER)
    found = detect_headers([("x-gw-attr", KV)], attribution_header_names("X-Gw-Attr"))
    assert [h.name for h in found] == ["x-gw-attr"]


# -- the policies ----------------------------------------------------------------------


def billing(value: str = KV) -> tuple[HeaderAttribution, ...]:
    return detect_headers([(HEADER_NAME, value)])


def test_strip_drops_every_attribution_header_and_adds_nothing() -> None:
    found = detect_headers(
        [(HEADER_NAME, KV), (METADATA_HEADER, "cc_entrypoint=cli;")], attribution_header_names()
    )
    out = apply_header_policy(found, Policy.STRIP)
    assert out.drop == {HEADER_NAME, METADATA_HEADER} and dict(out.add) == {}
    assert out.record() == {
        HEADER_NAME: {"form": "kv", "fields": FIELDS},
        METADATA_HEADER: {"form": "kv", "fields": {"cc_entrypoint": "cli"}},
    }


def test_passthrough_forwards_as_sent_but_still_records() -> None:
    out = apply_header_policy(billing(), Policy.PASSTHROUGH)
    assert out.drop == frozenset() and dict(out.add) == {}
    assert out.record() == {HEADER_NAME: {"form": "kv", "fields": FIELDS}}


def test_normalize_forwards_one_fixed_value_per_client() -> None:
    one = apply_header_policy(billing(), Policy.NORMALIZE)
    other = apply_header_policy(
        billing("cc_version=2.1.332.7aa; cc_entrypoint=sdk-cli; cch=00000;"), Policy.NORMALIZE
    )
    assert one.drop == {HEADER_NAME}
    assert dict(one.add) == dict(other.add) == {HEADER_NAME: "cc_entrypoint=sdk-cli;"}
    kept = apply_header_policy(
        billing(), Policy.NORMALIZE, normalize_keep=("cc_version", "cc_entrypoint")
    )
    assert dict(kept.add) == {HEADER_NAME: "cc_version=2.1.332; cc_entrypoint=sdk-cli;"}
    json_form = apply_header_policy(billing('{"cc_is_subagent":true}'), Policy.NORMALIZE)
    assert dict(json_form.add) == {HEADER_NAME: "normalized=true;"}


def test_preserve_as_metadata_moves_the_fields_to_the_configured_header() -> None:
    out = apply_header_policy(billing(), Policy.PRESERVE_AS_METADATA, metadata_header="x-attr")
    assert out.drop == {HEADER_NAME}
    assert dict(out.add) == {"x-attr": KV}
    unconfigured = apply_header_policy(billing(), Policy.PRESERVE_AS_METADATA)
    assert unconfigured.drop == {HEADER_NAME} and dict(unconfigured.add) == {}


def test_no_attribution_header_changes_nothing() -> None:
    for policy in Policy:
        out = rewrite_headers([("accept", "*/*")], policy, metadata_header="x-attr")
        assert out.found == () and out.drop == frozenset() and dict(out.add) == {}
        assert out.record() is None


def test_incoming_metadata_header_of_a_gateway_in_front() -> None:
    """A gateway in front already moved the block into x-prefixgate-attribution."""
    headers = [(METADATA_HEADER, KV)]
    stripped = rewrite_headers(headers, Policy.STRIP)
    assert stripped.drop == {METADATA_HEADER}
    assert stripped.record() == {METADATA_HEADER: {"form": "kv", "fields": FIELDS}}
    relayed = rewrite_headers(headers, Policy.PRESERVE_AS_METADATA, metadata_header=METADATA_HEADER)
    assert relayed.drop == {METADATA_HEADER} and dict(relayed.add) == {METADATA_HEADER: KV}
