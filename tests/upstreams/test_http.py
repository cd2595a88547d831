"""The one upstream client: open only while the app runs."""

from __future__ import annotations

import httpx
import pytest

from prefixgate.upstreams.http import UpstreamClient, json_bytes, json_object


async def test_the_client_exists_only_while_opened() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    upstreams = UpstreamClient(transport)
    assert not upstreams.started
    with pytest.raises(RuntimeError, match="lifespan"):
        upstreams.http  # noqa: B018
    async with upstreams.opened() as client:
        assert upstreams.started and upstreams.http is client
        assert (await client.get("http://upstream.test/")).status_code == 204
    assert not upstreams.started and client.is_closed


def test_json_helpers_read_objects_only_and_write_as_clients_get_it() -> None:
    assert json_object(b'{"a": 1}') == {"a": 1}
    assert json_object(b"[1]") is None and json_object(b"<html>") is None
    assert json_bytes({"text": "é", "n": [1, 2]}) == '{"text":"é","n":[1,2]}'.encode()


def test_an_answer_nested_past_the_parsers_depth_is_no_json_object() -> None:
    """Found by fuzz/fuzz_app.py: such an answer was a RecursionError (a 500)."""
    from prefixgate.config import UpstreamConfig
    from prefixgate.upstreams.http import json_object, status_error

    deep = b'{"content": [' * 50_000
    assert json_object(deep) is None
    error = status_error(UpstreamConfig(name="u", url="http://u.test"), 400, deep)
    assert "upstream 'u'" in error.message  # its text, cut: no traceback


@pytest.mark.parametrize("outcome", ["answered", "refused", "error status"])
async def test_send_calls_on_sent_once_whatever_the_transport_and_outcome(outcome: str) -> None:
    """A transport that cannot tell when the request is written (a mock here) gets
    it called once the answer began, or the sending failed."""
    from support.servers import free_port

    from prefixgate.config import UpstreamConfig
    from prefixgate.core.errors import PrefixgateError
    from prefixgate.upstreams.http import Outgoing, send

    calls: list[str] = []
    status = 500 if outcome == "error status" else 200
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={}))
    upstreams = UpstreamClient(None if outcome == "refused" else transport)
    url = f"http://127.0.0.1:{free_port()}" if outcome == "refused" else "http://upstream.test"
    config = UpstreamConfig(name="u", url=url, connect_timeout=2)
    async with upstreams.opened():
        try:
            response = await send(
                upstreams, config, Outgoing("/v1/messages", b"{}"), lambda: calls.append("sent")
            )
        except PrefixgateError:
            assert outcome != "answered"
        else:
            assert outcome == "answered"
            await response.aclose()
    assert calls == ["sent"]
