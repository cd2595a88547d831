"""The openai kind on its own: the request it builds, the answers it reads back."""

from __future__ import annotations

import json

import httpx
import pytest

from prefixgate.config import ConfigError, UpstreamConfig
from prefixgate.core.headers import HeaderRewrite
from prefixgate.core.pipeline import rewrite
from prefixgate.upstreams.kind import Incoming
from prefixgate.upstreams.openai import KIND, SSE_HEADERS, OpenAISettings, read_settings

UP = UpstreamConfig(name="lm", url="http://127.0.0.1:1234", kind="openai", api_key="sk-up")
BODY = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
CLIENT = {"user-agent": "claude-cli", "x-api-key": "sk-client", "anthropic-version": "2023-06-01"}
NO_HEADERS = httpx.Headers()


def test_the_call_is_a_chat_completion_with_the_upstreams_own_key() -> None:
    rw = rewrite(BODY)
    call = KIND.call(UP, Incoming(CLIENT, "/v1/messages"), rw, "s-1")
    out = call.outgoing
    assert (out.method, out.path) == ("POST", "/v1/chat/completions")
    assert out.headers == {
        "user-agent": "claude-cli",
        "content-type": "application/json",
        "authorization": "Bearer sk-up",
    }
    body = json.loads(out.body)
    assert body["model"] == "m" and body["max_tokens"] == 5
    assert body["user"] == "s-1" and body["prompt_cache_key"] == "s-1"


def test_a_whole_answer_is_an_anthropic_message_with_the_upstreams_usage() -> None:
    call = KIND.call(UP, Incoming({}, "/v1/messages"), rewrite(BODY), None)
    answer = {
        "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4}},
    }
    got = call.answer(200, NO_HEADERS, json.dumps(answer).encode())
    message = json.loads(got.content)
    assert got.status == 200 and got.media_type == "application/json" and got.error is None
    assert message["type"] == "message" and message["content"][0]["text"] == "ok"
    assert got.usage is not None and (got.usage.prompt_tokens, got.usage.cached_tokens) == (9, 4)
    assert got.summary is not None and got.summary.text == "ok"


def test_an_answer_that_is_not_json_is_a_502_the_record_names() -> None:
    call = KIND.call(UP, Incoming({}, "/v1/messages"), rewrite(BODY), None)
    got = call.answer(200, NO_HEADERS, b"<html>")
    assert got.status == 502 and got.error is not None and got.error.startswith("upstream 'lm'")
    assert json.loads(got.content)["error"]["type"] == "api_error"


def test_an_event_stream_is_sent_as_anthropic_events_and_json_is_a_whole_answer() -> None:
    call = KIND.call(UP, Incoming({}, "/v1/messages"), rewrite(BODY), None)
    streamed = call.stream(201, httpx.Headers({"content-type": "text/event-stream"}))
    assert streamed is not None and (streamed.status, streamed.headers) == (200, SSE_HEADERS)
    assert call.stream(200, httpx.Headers({"content-type": "application/json"})) is None


def test_the_model_list_is_asked_under_the_api_version_and_read_back_in_anthropic_shape() -> None:
    out = KIND.models(UP, Incoming(CLIENT, "/v1/models", HeaderRewrite().add))
    assert (out.method, out.path, out.body) == ("GET", "/v1/models", b"")
    listed = KIND.model_list(200, NO_HEADERS, b'{"data":[{"id":"qwen","created":0}]}')
    assert json.loads(listed.content)["data"][0]["id"] == "qwen"


def test_the_kinds_own_settings_are_read_with_their_defaults() -> None:
    assert read_settings("upstreams.lm", {}) == OpenAISettings("system", "session", True)
    table = {"system_messages": "user", "prompt_cache_key": "prefix", "reasoning": False}
    assert read_settings("upstreams.lm", table) == OpenAISettings("user", "prefix", False)


def test_a_setting_out_of_its_choices_is_refused_with_its_name() -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.lm\.prompt_cache_key"):
        read_settings("upstreams.lm", {"prompt_cache_key": "always"})


def test_the_call_follows_the_upstreams_kind_settings() -> None:
    own = OpenAISettings(system_messages="user", prompt_cache_key="prefix", reasoning=False)
    up = UpstreamConfig(name="lm", url="http://127.0.0.1:1234", kind="openai", kind_settings=own)
    rw = rewrite(BODY)
    body = json.loads(KIND.call(up, Incoming({}, "/v1/messages"), rw, "s-1").outgoing.body)
    assert body["prompt_cache_key"] == rw.key.hex and body["user"] == "s-1"
    assert KIND.read_settings("upstreams.lm", {"reasoning": False}) == OpenAISettings(
        reasoning=False
    )
