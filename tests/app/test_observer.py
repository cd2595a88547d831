"""The cache observer through the whole app: expected vs actual cached tokens and
the cause of each miss, as written to the audit.

The upstream is a fake llama.cpp (``httpx.MockTransport``): ``/v1/messages``
answers JSON or SSE with the Anthropic usage a test sets, ``/tokenize`` counts
one token per 4 characters. The observer finishes a record in a task of its
own when it must ask ``/tokenize``; tests wait for it with ``drain()``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from inmemory import running
from starlette.applications import Starlette

from prefixgate.app.gateway import create_app
from prefixgate.config import Settings, build_settings
from prefixgate.core.pipeline import rewrite
from prefixgate.core.sse import encode_event
from prefixgate.store.audit import AuditRecord, MemoryAudit

URL = "http://runtime.test:8080"
SESSION = "11111111-aaaa-4bbb-8ccc-000000000001"
OTHER = "22222222-aaaa-4bbb-8ccc-000000000002"
PROMPT = 2000  # what the fake upstream says every prompt weighs

ATTRIBUTION = {
    "type": "text",
    "text": "x-anthropic-billing-header: cc_version=2.1.197.56c; cc_entrypoint=cli;",
}
SYSTEM = "You are a coding agent.\n" + "".join(
    f"Rule {i}: keep the prompt prefix stable between turns.\n" for i in range(40)
)


def tool(name: str, description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}
    return {"name": name, "description": description, "input_schema": schema}


TOOLS = [tool("Bash", "Run a shell command. " * 8), tool("Read", "Read a file. " * 8)]
REPLIES = ["Here you go.", "Done: three files.", "The README says hello.", "All set."]


def conversation(opening: str, messages: int) -> list[dict[str, Any]]:
    """``messages`` alternating turns, starting with the user's ``opening``."""
    out = [{"role": "user", "content": opening}]
    for i in range(1, messages):
        role = "assistant" if i % 2 else "user"
        text = REPLIES[(i // 2) % len(REPLIES)] if role == "assistant" else f"next step {i}"
        out.append({"role": role, "content": text})
    return out


def body(
    messages: int = 1,
    *,
    opening: str = "list the files please",
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "system": [ATTRIBUTION, {"type": "text", "text": SYSTEM}],
        "tools": TOOLS if tools is None else tools,
        "messages": conversation(opening, messages),
        **extra,
    }


def piece_texts(request: dict[str, Any]) -> list[str]:
    """The pieces of ``request`` as the gateway sees them (attribution stripped)."""
    return [p.text for p in rewrite(json.dumps(request).encode()).view.pieces]


def piece_tokens(request: dict[str, Any]) -> list[int]:
    """The fake tokenizer's count of each piece of ``request``."""
    return [len(text) // 4 for text in piece_texts(request)]


def ideal(earlier: dict[str, Any], later: dict[str, Any], prompt: int = PROMPT) -> int:
    """What a prefix cache holding ``earlier`` should serve of ``later``: the
    leading pieces they share, in tokens, scaled to the prompt's reported size."""
    before, after = piece_texts(earlier), piece_texts(later)
    shared = 0
    while shared < min(len(before), len(after)) and before[shared] == after[shared]:
        shared += 1
    tokens = piece_tokens(later)
    return round(sum(tokens[:shared]) * prompt / sum(tokens))


# -- the fake upstream ----------------------------------------------------------


class Runtime:
    """A fake llama.cpp. ``cached`` is what the next answers report as read from
    cache (``None``: no cache fields at all); a ``status`` other than 200 answers
    an error; ``break_stream`` ends a streamed answer with an error event after
    its usage; ``hang_tokenize`` makes ``/tokenize`` never answer."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.cached: int | None = 0
        self.status = 200
        self.break_stream = False
        self.hang_tokenize = False
        self.transport = httpx.MockTransport(self._handle)

    @property
    def tokenized(self) -> list[str]:
        return [
            json.loads(r.content)["content"] for r in self.requests if r.url.path == "/tokenize"
        ]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/tokenize":
            if self.hang_tokenize:
                await asyncio.Event().wait()
            text = json.loads(request.content)["content"]
            return httpx.Response(200, json={"tokens": [7] * (len(text) // 4)})
        if self.status != 200:
            error = {"type": "invalid_request_error", "message": "prompt is too long"}
            return httpx.Response(self.status, json={"type": "error", "error": error})
        if request.url.path == "/v1/messages/count_tokens":
            return httpx.Response(200, json={"input_tokens": PROMPT})
        usage: dict[str, Any] = {"input_tokens": PROMPT, "output_tokens": 3}
        if self.cached is not None:
            usage = {**usage, "input_tokens": PROMPT - self.cached}
            usage["cache_read_input_tokens"] = self.cached
            usage["cache_creation_input_tokens"] = 0
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "gemma-3-270m",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if json.loads(request.content).get("stream"):
            return sse(message, broken=self.break_stream)
        return httpx.Response(200, json=message)


OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def sse(message: dict[str, Any], *, broken: bool = False) -> httpx.Response:
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 0}
    frames = [
        encode_event("message_start", {"type": "message_start", "message": start}),
        encode_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        encode_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        encode_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 3},
            },
        ),
        encode_event("message_stop", {"type": "message_stop"}),
    ]
    if broken:  # usage was sent, then the upstream gave up
        frames = [*frames[:2], encode_event("error", OVERLOADED)]
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=b"".join(frames)
    )


# -- running the app --------------------------------------------------------------


def settings(**server: Any) -> Settings:
    return build_settings({"server": server, "upstreams": {"local": {"url": URL}}}, {}, {})


def gateway(runtime: Runtime, **server: Any) -> Starlette:
    return create_app(settings(**server), transport=runtime.transport, audit=MemoryAudit())


async def send(
    client: httpx.AsyncClient,
    request: dict[str, Any],
    session: str | None = SESSION,
    path: str = "/v1/messages",
) -> httpx.Response:
    headers = {"x-claude-code-session-id": session} if session else {}
    return await client.post(path, json=request, headers=headers)


async def records(app: Starlette) -> list[AuditRecord]:
    """Every record, once the observer has finished them all."""
    await app.state.proxy.observer.drain()
    sink = app.state.audit
    assert isinstance(sink, MemoryAudit)
    return list(sink.records)


# -- expected and cause -------------------------------------------------------------


async def test_the_first_request_of_a_session_expects_nothing_cached() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        response = await send(client, body())
        assert response.status_code == 200
        (rec,) = await records(app)
    assert (rec.session, rec.session_source, rec.agent, rec.kind) == (
        SESSION,
        "header",
        "main",
        "message",
    )
    assert (rec.prompt_tokens, rec.cached_tokens) == (PROMPT, 0)
    assert rec.expected_cached_tokens == 0
    assert rec.expected_source == "tokenizer"
    assert (rec.cause, rec.changed_segment, rec.cause_detail) == ("none", None, None)
    assert runtime.tokenized  # the upstream's tokenizer was asked


async def test_an_appended_turn_expects_the_previous_prompt_from_the_tokenizer() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    first, second = body(1), body(3, stream=True)
    async with running(app) as client:
        await send(client, first)
        await records(app)
        asked_before = len(runtime.tokenized)
        runtime.cached = ideal(first, second)
        response = await send(client, second)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        _, rec = await records(app)
    assert rec.expected_cached_tokens == ideal(first, second)
    assert 0 < rec.expected_cached_tokens < PROMPT
    assert rec.expected_source == "tokenizer"
    assert rec.cached_tokens == rec.expected_cached_tokens
    assert rec.stream is True
    assert rec.cause == "none"
    # counts are cached by piece: only the two new messages were tokenized
    new_messages = piece_texts(second)[-2:]
    assert sorted(runtime.tokenized[asked_before:]) == sorted(new_messages)


async def test_serving_less_than_expected_with_nobody_in_between_is_upstream_dropped() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        runtime.cached = 0
        await send(client, body(3))
        _, rec = await records(app)
    assert rec.expected_cached_tokens == ideal(body(1), body(3))
    assert rec.cached_tokens == 0
    assert rec.cause == "upstream_dropped"
    assert rec.changed_segment is None
    assert (
        rec.cause_detail
        == f"prefix unchanged; served 0 of {rec.expected_cached_tokens:,} expected tokens"
    )


async def test_a_small_shortfall_is_noise_not_a_miss() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        runtime.cached = ideal(body(1), body(3)) - 10  # e.g. a retokenised boundary
        await send(client, body(3))
        _, rec = await records(app)
    assert rec.cached_tokens == rec.expected_cached_tokens - 10
    assert rec.cause == "none"


async def test_another_session_in_between_is_evicted_by_other_session() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        poem = body(1, opening="write a poem")
        # the other conversation shares the system prompt and the tools, not the messages
        runtime.cached = ideal(body(1), poem)
        await send(client, poem, session=OTHER)
        runtime.cached = 0
        await send(client, body(3))
        first, other, evicted = await records(app)
    assert (first.session, other.session, evicted.session) == (SESSION, OTHER, SESSION)
    assert 0 < other.expected_cached_tokens == ideal(body(1), poem) < PROMPT
    assert other.cause == "none"
    assert evicted.expected_cached_tokens == ideal(body(1), body(3))
    assert evicted.cause == "evicted_by_other_session"
    assert evicted.cause_detail is not None
    assert f"session {OTHER[:8]} (main) used the upstream in between" in evicted.cause_detail


async def test_a_changed_tool_schema_is_tools_changed() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    changed = [tool("Bash", "Run a shell command, carefully. " * 8), TOOLS[1]]
    async with running(app) as client:
        await send(client, body(1))
        runtime.cached = 0
        await send(client, body(3, tools=changed))
        _, rec = await records(app)
    assert rec.agent == "main"  # same tool names: still the main agent
    assert rec.cause == "tools_changed"
    assert rec.changed_segment == "tools:Bash"
    assert rec.cause_detail is not None and "Bash: description changed" in rec.cause_detail
    # only the system prompt, before the tool, could have been served
    assert rec.expected_cached_tokens == ideal(body(1), body(3, tools=changed))
    assert rec.expected_cached_tokens < ideal(body(1), body(3))


async def test_no_cache_fields_is_unknown_and_not_a_miss() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        runtime.cached = None
        await send(client, body(3))
        _, rec = await records(app)
    assert rec.prompt_tokens == PROMPT
    assert rec.cached_tokens is None
    assert rec.cache_read_input_tokens is None
    assert rec.expected_cached_tokens == ideal(body(1), body(3))
    assert rec.cause == "none"


async def test_counts_already_known_finish_the_record_at_once() -> None:
    runtime = Runtime()
    app = create_app(
        build_settings({"upstreams": {"local": {"url": URL, "tokenizer": "estimate"}}}, {}, {}),
        transport=runtime.transport,
        audit=MemoryAudit(),
    )
    async with running(app) as client:
        await send(client, body(1))
        assert app.state.proxy.observer.pending == 0
        (rec,) = app.state.audit.records  # no drain needed
    assert rec.expected_source == "estimate"
    assert rec.cause == "none"
    assert runtime.tokenized == []


# -- kinds and sessions -------------------------------------------------------------


async def test_count_tokens_is_labelled_and_never_tokenized_nor_remembered() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    counted = {k: v for k, v in body(3).items() if k != "max_tokens"}
    async with running(app) as client:
        response = await send(client, counted, path="/v1/messages/count_tokens")
        assert response.json() == {"input_tokens": PROMPT}
        assert runtime.tokenized == []
        await send(client, body(1))
        count, message = await records(app)
    assert count.kind == "count_tokens"
    assert count.route == "/v1/messages/count_tokens"
    assert count.cached_tokens is None
    assert (count.expected_cached_tokens, count.expected_source, count.cause) == (None, None, None)
    # the count used no cache: the session's first message still expects nothing
    assert message.kind == "message"
    assert message.expected_cached_tokens == 0


async def test_max_tokens_1_is_a_probe() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1, max_tokens=1))
        await send(client, body(1, max_tokens=2))
        probe, message = await records(app)
    assert (probe.kind, message.kind) == ("probe", "message")


async def test_the_session_comes_from_metadata_user_id_without_the_header() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": OTHER})
    metadata = {"user_id": user_id}
    async with running(app) as client:
        await send(client, body(1, metadata=metadata), session=None)
        runtime.cached = 0
        await send(client, body(3, metadata=metadata), session=None)
        first, second = await records(app)
    assert (first.session, first.session_source) == (OTHER, "metadata")
    assert (second.session, second.session_source) == (OTHER, "metadata")
    assert second.expected_cached_tokens == ideal(body(1), body(3))
    assert second.cause == "upstream_dropped"


# -- failures -----------------------------------------------------------------------


async def test_a_record_cut_short_by_drain_is_written_without_expected() -> None:
    runtime = Runtime()
    runtime.hang_tokenize = True
    runtime.cached = 0
    app = gateway(runtime)
    async with running(app) as client:
        response = await send(client, body(1))
        assert response.status_code == 200  # the client never waits for the count
        observer = app.state.proxy.observer
        assert observer.pending == 1
        (provisional,) = app.state.audit.records  # on disk before the answer went out
        assert provisional.cause is None and provisional.expected_cached_tokens is None
        await observer.drain(timeout=0.1)
        assert observer.pending == 0
        (rec,) = app.state.audit.records
    assert rec.status == 200
    assert (rec.prompt_tokens, rec.cached_tokens) == (PROMPT, 0)
    assert rec.expected_cached_tokens is None
    assert rec.expected_source is None
    assert rec.cause == "none"
    assert rec.request_id == provisional.request_id
    assert len(app.state.audit.records) == 1  # replaced in place, not again at shutdown


async def test_shutdown_writes_records_still_waiting_for_their_counts() -> None:
    runtime = Runtime()
    runtime.hang_tokenize = True
    sink = MemoryAudit()
    app = create_app(settings(), transport=runtime.transport, audit=sink)
    observer = app.state.proxy.observer
    drain = observer.drain

    async def quick_drain(timeout: float = 10.0) -> None:  # shutdown, without the 10 s wait
        await drain(timeout=0.05)

    observer.drain = quick_drain
    async with running(app) as client:
        await send(client, body(1))
        assert observer.pending == 1
    (rec,) = sink.records
    assert rec.expected_cached_tokens is None
    assert rec.status == 200


async def test_an_upstream_4xx_is_recorded_with_its_status_and_no_miss() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        runtime.status = 400
        response = await send(client, body(3))
        assert response.status_code == 400
        _, rec = await records(app)
    assert rec.status == 400
    assert rec.error is not None and "prompt is too long" in rec.error
    assert (rec.prompt_tokens, rec.cached_tokens) == (None, None)
    assert rec.cause == "none"


async def test_a_stream_that_fails_after_its_usage_is_not_judged_a_miss() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        runtime.cached = 0
        runtime.break_stream = True
        response = await send(client, body(3, stream=True))
        assert response.status_code == 200
        _, rec = await records(app)
    assert (rec.status, rec.error) == (200, "Overloaded")
    assert rec.cached_tokens == 0  # reported before the failure
    assert rec.expected_cached_tokens == ideal(body(1), body(3))
    assert rec.cause == "none"  # a failed answer says nothing about the cache


async def test_an_invalid_request_is_recorded_without_cache_fields() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        response = await client.post("/v1/messages", content=b"{not json")
        assert response.status_code == 400
        (rec,) = await records(app)
    assert rec.status == 400
    assert (rec.expected_cached_tokens, rec.cause) == (None, None)
    assert runtime.requests == []


# -- body capture -------------------------------------------------------------------


async def test_bodies_are_not_kept_unless_capture_bodies_is_on() -> None:
    runtime = Runtime()
    app = gateway(runtime)
    async with running(app) as client:
        await send(client, body(1))
        await send(client, body(3, stream=True))
        recs = await records(app)
    assert [(r.request_body, r.response_text) for r in recs] == [(None, None), (None, None)]


async def test_capture_bodies_keeps_the_request_and_the_answer() -> None:
    runtime = Runtime()
    app = gateway(runtime, capture_bodies=True)
    assert app.state.proxy.settings.capture_bodies is True
    sent = [body(1), body(3, stream=True)]
    async with running(app) as client:
        raws = []
        for request in sent:
            raw = json.dumps(request).encode()
            raws.append(raw.decode())
            await client.post(
                "/v1/messages", content=raw, headers={"x-claude-code-session-id": SESSION}
            )
        whole, streamed = await records(app)
    assert whole.request_body == raws[0]
    assert whole.response_text == "Hello"
    assert streamed.request_body == raws[1]
    assert streamed.response_text == "Hi"


# -- what waits until the client has its answer ---------------------------------------


async def test_finish_records_at_once_and_leaves_learning_and_counting_for_after() -> None:
    from prefixgate.app.metrics import Metrics
    from prefixgate.app.observer import CacheObserver
    from prefixgate.config import UpstreamConfig

    observer = CacheObserver(Settings(), MemoryAudit(), Metrics())
    upstream = UpstreamConfig(name="local", url=URL)
    rw = rewrite(json.dumps(body(1)).encode())
    who = observer.identify({}, "/v1/messages", rw, "default")

    def counted() -> bool:
        return b"prefixgate_requests_total{" in observer.metrics.exposition()

    for status, learnt in ((502, False), (200, True)):
        seen = observer.begin(who, rw, upstream, "default")
        rec = AuditRecord(
            time=0.0,
            route="/v1/messages",
            tenant="default",
            session=who.session,
            model="m",
            upstream="local",
            policy="strip",
            status=status,
        )
        after = observer.finish(rec, seen)
        assert observer.audit.records[-1] == rec  # recorded at once
        assert not observer.begin(who, rw, upstream, "default").comparison.has_session_ref
        assert counted() == (status == 200)  # the 502 before was counted by its after()
        after()
        assert counted()
        again = observer.begin(who, rw, upstream, "default")
        assert again.comparison.has_session_ref == learnt  # a failed answer is not learnt
