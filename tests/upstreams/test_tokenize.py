"""TokenCounter: which upstreams are asked, when, how often, and what a failure gives.

The upstream is an ``httpx.MockTransport`` that answers ``POST /tokenize`` the
way llama.cpp does (one token per 4 characters here) unless a test says
otherwise, and records every request it receives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest

from prefixgate.config import UpstreamConfig, upstream_from_table
from prefixgate.core.canonical import digest
from prefixgate.core.prompt import Piece
from prefixgate.upstreams.tokenize import ESTIMATE, TOKENIZER, TokenCounter, estimate

URL = "http://runtime.test:8080"
Answer = Callable[[httpx.Request], Awaitable[httpx.Response]]


def piece(text: str, name: str = "messages[0]") -> Piece:
    return Piece("messages", name, digest(text), text)


SYSTEM = piece("You are a careful agent. " * 8, "system[0]")  # 200 chars
TURN = piece("please list the files", "messages[0]")  # 21 chars
REPLY = piece("README.md src tests", "messages[1]")  # 19 chars


def true_count(text: str) -> int:
    """What the fake llama.cpp answers: one token per 4 characters (not the estimate's
    rounding up, so a test can tell the two apart)."""
    return len(text) // 4


async def llama_cpp(request: httpx.Request) -> httpx.Response:
    content = json.loads(request.content)["content"]
    return httpx.Response(200, json={"tokens": list(range(true_count(content)))})


async def not_found(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"error": "File Not Found"})


class Runtime:
    """A MockTransport answering with ``answer``; records what it was asked."""

    def __init__(self, answer: Answer = llama_cpp) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.answer(request)

    @property
    def contents(self) -> list[str]:
        return [json.loads(r.content)["content"] for r in self.requests]


def upstream(url: str = URL, **table: object) -> UpstreamConfig:
    return upstream_from_table("local", {"url": url, **table})


def counting(
    runtime: Runtime, config: UpstreamConfig | None = None, **kwargs: int
) -> tuple[TokenCounter, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=runtime.transport)
    return TokenCounter(config or upstream(), client, **kwargs), client


# -- estimate -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 1), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_estimate_is_a_quarter_of_the_length_rounded_up_and_at_least_one(
    text: str, tokens: int
) -> None:
    assert estimate(text) == tokens


# -- auto: the probe ------------------------------------------------------------


async def test_auto_asks_tokenize_and_then_counts_with_it() -> None:
    runtime = Runtime()
    counter, client = counting(runtime)
    async with client:
        assert counter.source == ESTIMATE  # nothing decided yet
        counts, source = await counter.counts([SYSTEM, TURN])
    assert source == TOKENIZER == counter.source
    assert counts == {SYSTEM.digest: 50, TURN.digest: 5}
    for request in runtime.requests:
        assert request.method == "POST"
        assert str(request.url) == f"{URL}/tokenize"
        body = json.loads(request.content)
        assert set(body) == {"content", "add_special"}
        assert body["add_special"] is False
    # every piece was tokenized; besides that, at most the one probe
    assert set(runtime.contents) == {SYSTEM.text, TURN.text}
    assert len(runtime.requests) <= 3


async def test_counts_are_cached_so_the_same_pieces_cost_no_request() -> None:
    runtime = Runtime()
    counter, client = counting(runtime)
    async with client:
        first = await counter.counts([SYSTEM, TURN])
        asked = len(runtime.requests)
        again = await counter.counts([SYSTEM, TURN])
        assert len(runtime.requests) == asked
        assert again == first
        # a later turn: only the new piece is tokenized
        grown = await counter.counts([SYSTEM, TURN, REPLY])
    assert runtime.contents[asked:] == [REPLY.text]
    assert grown == ({SYSTEM.digest: 50, TURN.digest: 5, REPLY.digest: 4}, TOKENIZER)


async def test_the_probe_is_made_once() -> None:
    runtime = Runtime()
    counter, client = counting(runtime)
    async with client:
        await counter.counts([SYSTEM])
        await counter.counts([TURN])
        await counter.counts([REPLY])
    # after the first call, exactly one request per new piece
    assert runtime.contents[-2:] == [TURN.text, REPLY.text]
    assert runtime.contents.count(SYSTEM.text) <= 2  # probe + count, never more


async def test_a_404_means_estimates_from_then_on() -> None:
    runtime = Runtime(not_found)
    counter, client = counting(runtime)
    async with client:
        counts, source = await counter.counts([SYSTEM, TURN])
        assert (counts, source) == (
            {SYSTEM.digest: estimate(SYSTEM.text), TURN.digest: estimate(TURN.text)},
            ESTIMATE,
        )
        assert len(runtime.requests) == 1
        runtime.answer = llama_cpp  # even if it would answer now, it is not asked again
        assert (await counter.counts([REPLY]))[1] == ESTIMATE
        assert counter.known([REPLY]) == ({REPLY.digest: estimate(REPLY.text)}, ESTIMATE)
    assert len(runtime.requests) == 1


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, json={"content": "no tokens here"}),
        httpx.Response(200, content=b"<html>not json</html>"),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(500, json={"tokens": [1, 2, 3]}),
        httpx.Response(405),
    ],
    ids=["no-token-list", "not-json", "json-list", "server-error", "method-not-allowed"],
)
async def test_any_other_answer_to_the_probe_means_estimates(response: httpx.Response) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return response

    runtime = Runtime(answer)
    counter, client = counting(runtime)
    async with client:
        assert (await counter.counts([SYSTEM]))[1] == ESTIMATE
        await counter.counts([TURN])
    assert len(runtime.requests) == 1
    assert counter.source == ESTIMATE


async def test_a_connection_failure_decides_nothing() -> None:
    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    runtime = Runtime(down)
    counter, client = counting(runtime)
    async with client:
        counts, source = await counter.counts([SYSTEM])
        assert (counts, source) == ({SYSTEM.digest: estimate(SYSTEM.text)}, ESTIMATE)
        assert counter.known([SYSTEM]) is None  # still undecided: no estimate forever
        runtime.answer = llama_cpp  # the upstream came up
        counts, source = await counter.counts([SYSTEM])
    assert (counts, source) == ({SYSTEM.digest: 50}, TOKENIZER)
    assert len(runtime.requests) >= 2  # asked again after the failure


# -- configured modes -----------------------------------------------------------


async def test_first_party_upstreams_are_never_asked() -> None:
    runtime = Runtime()
    config = upstream("https://api.anthropic.com")
    assert config.first_party and config.tokenizer == "auto"
    counter, client = counting(runtime, config)
    async with client:
        assert counter.known([SYSTEM]) == ({SYSTEM.digest: estimate(SYSTEM.text)}, ESTIMATE)
        assert (await counter.counts([SYSTEM, TURN]))[1] == ESTIMATE
    assert runtime.requests == []


async def test_a_first_party_upstream_named_llama_cpp_is_asked() -> None:
    # only "auto" is decided by the URL; an explicit choice is the operator's
    runtime = Runtime()
    config = upstream("https://api.anthropic.com", tokenizer="llama.cpp")
    counter, client = counting(runtime, config)
    async with client:
        assert (await counter.counts([TURN]))[1] == TOKENIZER
    assert runtime.contents == [TURN.text]


async def test_estimate_mode_never_asks() -> None:
    runtime = Runtime()
    counter, client = counting(runtime, upstream(tokenizer="estimate"))
    async with client:
        assert (await counter.counts([SYSTEM, TURN]))[1] == ESTIMATE
    assert runtime.requests == []


async def test_llama_cpp_mode_needs_no_probe() -> None:
    runtime = Runtime()
    counter, client = counting(runtime, upstream(tokenizer="llama.cpp"))
    async with client:
        assert counter.source == TOKENIZER
        assert counter.known([SYSTEM]) is None  # not counted yet
        counts, source = await counter.counts([SYSTEM, TURN])
    assert (counts, source) == ({SYSTEM.digest: 50, TURN.digest: 5}, TOKENIZER)
    assert sorted(runtime.contents) == sorted([SYSTEM.text, TURN.text])  # no extra probe


# -- known() --------------------------------------------------------------------


async def test_known_answers_without_io_only_when_every_piece_is_counted() -> None:
    runtime = Runtime()
    counter, client = counting(runtime)
    async with client:
        assert counter.known([SYSTEM]) is None  # undecided
        await counter.counts([SYSTEM, TURN])
        asked = len(runtime.requests)
        assert counter.known([TURN, SYSTEM]) == ({TURN.digest: 5, SYSTEM.digest: 50}, TOKENIZER)
        assert counter.known([SYSTEM, REPLY]) is None  # REPLY was never counted
        assert counter.known([]) == ({}, TOKENIZER)
    assert len(runtime.requests) == asked


async def test_the_cache_forgets_the_least_recently_counted_first() -> None:
    runtime = Runtime()
    counter, client = counting(runtime, upstream(tokenizer="llama.cpp"), cache_size=2)
    async with client:
        await counter.counts([SYSTEM])
        await counter.counts([TURN])
        await counter.counts([REPLY])
        assert counter.known([TURN, REPLY]) is not None
        assert counter.known([SYSTEM]) is None
        await counter.counts([SYSTEM])
    assert runtime.contents == [SYSTEM.text, TURN.text, REPLY.text, SYSTEM.text]


# -- failures after the probe ----------------------------------------------------


async def test_a_tokenizer_failure_midway_falls_back_to_estimates() -> None:
    async def flaky(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["content"] == REPLY.text:
            return httpx.Response(503, json={"error": "busy"})
        return await llama_cpp(request)

    runtime = Runtime(flaky)
    counter, client = counting(runtime)
    async with client:
        await counter.counts([SYSTEM, TURN])
        counts, source = await counter.counts([SYSTEM, TURN, REPLY])
        # all of this request's counts are estimates, not a mix of the two
        assert source == ESTIMATE
        assert counts == {
            SYSTEM.digest: estimate(SYSTEM.text),
            TURN.digest: estimate(TURN.text),
            REPLY.digest: estimate(REPLY.text),
        }
        # the tokenizer is still the source: the next request is counted by it
        assert counter.source == TOKENIZER
        runtime.answer = llama_cpp
        counts, source = await counter.counts([SYSTEM, TURN, REPLY])
    assert (counts, source) == ({SYSTEM.digest: 50, TURN.digest: 5, REPLY.digest: 4}, TOKENIZER)


async def no_token_list(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"oops": True})


async def not_json(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"not json")


async def too_deep(request: httpx.Request) -> httpx.Response:
    """Nested past the JSON parser's recursion limit (found by fuzz/fuzz_app.py: a 500)."""
    return httpx.Response(200, content=b"[" * 50_000)


async def server_error(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500)


async def timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("too slow", request=request)


@pytest.mark.parametrize("failure", [no_token_list, not_json, too_deep, server_error, timeout])
async def test_every_kind_of_tokenizer_failure_gives_estimates(failure: Answer) -> None:
    runtime = Runtime(failure)
    counter, client = counting(runtime, upstream(tokenizer="llama.cpp"))
    async with client:
        counts, source = await counter.counts([SYSTEM])
    assert (counts, source) == ({SYSTEM.digest: estimate(SYSTEM.text)}, ESTIMATE)
    assert len(runtime.requests) == 1
    assert counter.known([SYSTEM]) is None  # nothing wrong was cached


async def test_requests_in_flight_are_limited() -> None:
    in_flight, most = 0, 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return await llama_cpp(request)

    runtime = Runtime(slow)
    counter, client = counting(runtime, upstream(tokenizer="llama.cpp"), concurrency=2)
    pieces = [piece(f"message number {i}", f"messages[{i}]") for i in range(8)]
    async with client:
        counts, source = await counter.counts(pieces)
    assert source == TOKENIZER and len(counts) == 8
    assert most == 2
