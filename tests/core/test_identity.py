"""Who sent a request: session, agent and kind."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from prefixgate.core.attribution import Attribution, parse_header
from prefixgate.core.identity import (
    SESSION_HEADER,
    AgentLabeller,
    Identity,
    agent_of,
    identify,
    kind_of,
    session_from_metadata,
    session_of,
)
from prefixgate.core.pipeline import Rewrite, RewriteOptions, rewrite

SESSION = "15389b44-ba54-41b7-8793-6b90cec761f6"
KEY = "0123456789abcdef" + "f" * 48
TOOLS = [{"name": "Bash"}, {"name": "Read"}]


def header(text: str) -> Attribution:
    found = parse_header(text)
    assert found is not None
    return found


def user_id(**fields: str) -> dict[str, str]:
    return {"user_id": json.dumps(fields)}


# -- session -------------------------------------------------------------------


def test_the_session_header_wins() -> None:
    body = {"metadata": user_id(session_id="from-metadata")}
    assert session_of({SESSION_HEADER: f"  {SESSION} "}, body, KEY) == (SESSION, "header")


def test_a_long_header_is_cut() -> None:
    session, source = session_of({SESSION_HEADER: "s" * 1000}, {}, KEY)
    assert (session, source) == ("s" * 128, "header")


def test_a_blank_header_falls_through() -> None:
    body = {"metadata": user_id(session_id=SESSION)}
    assert session_of({SESSION_HEADER: "   "}, body, KEY) == (SESSION, "metadata")


def test_session_from_the_metadata_json_string() -> None:
    body = {"metadata": user_id(device_id="2b92", account_uuid="", session_id=SESSION)}
    assert session_of({}, body, KEY) == (SESSION, "metadata")


def test_session_from_the_legacy_user_id() -> None:
    legacy = f"user_2b922b08692a53b1_account_42_session_{SESSION}"
    assert session_of({}, {"metadata": {"user_id": legacy}}, KEY) == (SESSION, "metadata")
    no_account = f"user_abc123_account__session_{SESSION}"
    assert session_from_metadata({"user_id": no_account}) == SESSION


def test_a_long_session_id_is_cut_in_every_form() -> None:
    assert session_from_metadata(user_id(session_id="a" * 500)) == "a" * 128
    legacy = "user_abc_account_1_session_" + "b" * 500
    assert session_from_metadata({"user_id": legacy}) == "b" * 128


def test_otherwise_the_session_is_the_key() -> None:
    assert session_of({}, {}, KEY) == ("key:0123456789abcdef", "key")


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "user_id",
        {},
        {"user_id": None},
        {"user_id": ""},
        {"user_id": 42},
        {"user_id": "{not json"},
        {"user_id": '["session_id"]'},
        {"user_id": json.dumps({"device_id": "x"})},
        {"user_id": json.dumps({"session_id": ""})},
        {"user_id": json.dumps({"session_id": 7})},
        {"user_id": "user_xyz_account_1_session_" + SESSION},  # not hex
        {"user_id": "user_abc_account_1_session_short"},
        {"user_id": "plain-user-id"},
    ],
)
def test_metadata_without_a_session(metadata: Any) -> None:
    assert session_from_metadata(metadata) is None
    assert session_of({}, {"metadata": metadata}, KEY) == ("key:0123456789abcdef", "key")


# -- agent ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_is_subagent=true;",
        'x-anthropic-billing-header: {"cc_is_subagent":true}',
    ],
)
def test_a_flagged_subagent(block: str) -> None:
    assert agent_of(header(block), {"tools": TOOLS}) == "sub"
    assert agent_of(header(block), {}) == "sub"  # the flag wins over a missing tool list


def test_main_and_side() -> None:
    plain = header("x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_is_subagent=false;")
    assert agent_of(plain, {"tools": TOOLS}) == "main"
    assert agent_of(None, {"tools": TOOLS}) == "main"
    assert agent_of(None, {"tools": []}) == "side"
    assert agent_of(None, {}) == "side"
    assert agent_of(plain, {"tools": None}) == "side"


# -- kind ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "kind"),
    [
        ("/v1/messages", {"max_tokens": 1}, "probe"),
        ("/v1/messages", {"max_tokens": True}, "message"),
        ("/v1/messages", {"max_tokens": 2}, "message"),
        ("/v1/messages", {"max_tokens": 64000}, "message"),
        ("/v1/messages", {}, "message"),
        ("/v1/messages/count_tokens", {}, "count_tokens"),
        ("/v1/messages/count_tokens/", {"max_tokens": 1}, "count_tokens"),
        ("/anthropic/v1/messages/count_tokens", {}, "count_tokens"),
    ],
)
def test_kind(route: str, body: dict[str, Any], kind: str) -> None:
    assert kind_of(route, body) == kind


# -- AgentLabeller -------------------------------------------------------------


def test_a_different_tool_set_within_a_session_is_a_subagent() -> None:
    labeller = AgentLabeller()
    assert labeller.label("t", "s1", "main", ["Bash", "Read", "Write"]) == "main"
    assert labeller.label("t", "s1", "main", ["Write", "Bash", "Read"]) == "main"
    assert labeller.label("t", "s1", "main", ["Bash", "Read"]) == "sub"
    # other sessions and other tenants fix their own main tool set
    assert labeller.label("t", "s2", "main", ["Bash"]) == "main"
    assert labeller.label("u", "s1", "main", ["Bash"]) == "main"
    assert labeller.label("t", "s2", "main", ["Bash"]) == "main"


def test_flagged_and_side_requests_pass_through_without_fixing_the_tool_set() -> None:
    labeller = AgentLabeller()
    assert labeller.label("t", "s", "sub", ["Read"]) == "sub"
    assert labeller.label("t", "s", "side", []) == "side"
    assert labeller.label("t", "s", "main", ["Bash", "Read"]) == "main"
    assert labeller.label("t", "s", "sub", ["Bash", "Read"]) == "sub"


def test_the_labeller_forgets_the_oldest_session() -> None:
    labeller = AgentLabeller(limit=2)
    labeller.label("t", "s1", "main", ["Bash"])
    labeller.label("t", "s2", "main", ["Bash"])
    assert labeller.label("t", "s1", "main", ["Read"]) == "sub"  # s1 still known
    labeller.label("t", "s3", "main", ["Bash"])  # forgets s1, the first one seen
    assert labeller.label("t", "s1", "main", ["Read"]) == "main"
    assert labeller.label("t", "s3", "main", ["Read"]) == "sub"


# -- identify ------------------------------------------------------------------


def rewritten(body: dict[str, Any]) -> Rewrite:
    return rewrite(json.dumps(body).encode(), RewriteOptions())


def corpus_identity(record: Any, labeller: AgentLabeller, body: Any = None) -> Identity:
    headers = {k.lower(): v for k, v in record.headers.items()}
    route = record.path.split("?", 1)[0]
    return identify(headers, route, rewritten(body or record.body), "default", labeller)


def test_identify_corpus_requests(plain_records: list[Any]) -> None:
    labeller = AgentLabeller()
    main = corpus_identity(plain_records[4], labeller)
    assert main == Identity("5229c4e6-97c8-45fd-8d85-713bcdf01764", "header", "main", "message")
    sub = corpus_identity(plain_records[5], labeller)
    assert sub == Identity("5229c4e6-97c8-45fd-8d85-713bcdf01764", "header", "sub", "message")
    assert corpus_identity(plain_records[7], labeller).agent == "main"


def test_identify_a_side_request(interactive_records: list[Any]) -> None:
    title = corpus_identity(interactive_records[0], AgentLabeller())
    assert (title.agent, title.kind) == ("side", "message")


def test_identify_without_the_header(plain_records: list[Any]) -> None:
    record = plain_records[0]
    body = record.body
    rw = rewritten(body)
    who = identify({}, "/v1/messages", rw, "default", AgentLabeller())
    assert (who.session, who.session_source) == (SESSION, "metadata")
    del body["metadata"]
    rw = rewritten(body)
    who = identify({}, "/v1/messages", rw, "default", AgentLabeller())
    assert who.session_source == "key"
    assert re.fullmatch(r"key:[0-9a-f]{16}", who.session)
    assert who.session == f"key:{rw.key.hex[:16]}"


def test_identify_probes_and_token_counts(plain_records: list[Any]) -> None:
    body = plain_records[0].body
    body["max_tokens"] = 1
    probe = identify({}, "/v1/messages", rewritten(body), "default", AgentLabeller())
    assert probe.kind == "probe"
    count = identify({}, "/v1/messages/count_tokens", rewritten(body), "default", AgentLabeller())
    assert count.kind == "count_tokens"


def unflagged(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as an older client sends it: no subagent flag in the block."""
    out = copy.deepcopy(body)
    out["system"][0]["text"] = out["system"][0]["text"].replace(" cc_is_subagent=true;", "")
    return out


def test_an_unflagged_subagent_is_told_by_its_tool_set(plain_records: list[Any]) -> None:
    main_body, sub_body = plain_records[4].body, unflagged(plain_records[5].body)
    assert "cc_is_subagent" not in sub_body["system"][0]["text"]
    assert agent_of(rewritten(sub_body).attribution, sub_body) == "main"  # on its own
    labeller = AgentLabeller()
    assert corpus_identity(plain_records[4], labeller, main_body).agent == "main"
    assert corpus_identity(plain_records[5], labeller, sub_body).agent == "sub"
    assert corpus_identity(plain_records[7], labeller).agent == "main"


def test_a_changed_tool_description_is_not_a_subagent(plain_records: list[Any]) -> None:
    labeller = AgentLabeller()
    assert corpus_identity(plain_records[0], labeller).agent == "main"
    body = plain_records[1].body
    body["tools"][0]["description"] = "A re-rendered description."
    assert corpus_identity(plain_records[1], labeller, body).agent == "main"
