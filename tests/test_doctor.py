"""``prefixgate doctor`` against fake runtimes of the shapes it cannot reach here.

Each fake is a ``FakeUpstream`` (tests/support/upstream.py) answering as a small
simulated runtime: it renders a request into words (system, tools, messages in
order, a mid-conversation system message kept, moved, dropped or refused), keeps
the last prompt as its one slot, and reports the shared head as cached tokens
in the usage shape of the runtime it stands for, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.servers import ServerThread, free_port
from support.upstream import FakeUpstream

from prefixgate.cli import main
from prefixgate.doctor import (
    MID_SYSTEM,
    TOOL_NAME,
    Answer,
    Diagnosis,
    Findings,
    Template,
    assess,
    model_memory,
    probe_runtime,
    render,
    template_from_counts,
    template_from_render,
)

URL = "http://runtime.test"


class Runtime:
    """A simulated runtime behind a FakeUpstream.

    ``usage``: anthropic | openai | ollama | none. ``cache``: prefix (longest
    shared head), exact (only a prompt seen before, whole) or off. ``mid``: keep |
    hoist | drop | refuse. ``paths``: the endpoints that answer."""

    def __init__(
        self,
        *,
        usage: str,
        paths: set[str],
        cache: str = "prefix",
        tools: bool = True,
        mid: str = "keep",
        model: str = "some-model",
        slots: list[dict[str, Any]] | None = None,
        prefix: str = "",
    ) -> None:
        self.usage, self.paths, self.cache, self.tools, self.mid = usage, paths, cache, tools, mid
        self.model = model
        self.slots = slots
        self.prefix = prefix  # the path of a base URL such as https://host/api/v1, less /v1
        self.last: list[str] = []
        self.sizes: list[int] = []  # of every prompt rendered for a chat request
        self.seen: set[tuple[str, ...]] = set()
        self.upstream = FakeUpstream(self.respond)

    def render(self, body: Mapping[str, Any]) -> list[str] | None:
        words: list[str] = []
        if isinstance(body.get("system"), str):
            words += ["system:", *body["system"].split()]
        if self.tools:
            for tool in body.get("tools", []):
                words += ["tool:", *json.dumps(tool).split()]
        hoisted: list[str] = []
        for i, message in enumerate(body["messages"]):
            text = [f"{message['role']}:", *str(message["content"]).split()]
            if message["role"] == "system" and i > 0:
                if self.mid == "refuse":
                    return None
                if self.mid == "drop":
                    continue
                if self.mid == "hoist":
                    hoisted += text
                    continue
            words += text
        return hoisted + words

    def respond(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(self.prefix)
        if path not in self.paths:
            return httpx.Response(404, json={"error": "not found"})
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": self.model}]})
        if path == "/metrics":
            return httpx.Response(200, text="# HELP runtime_requests_total requests\n")
        if path == "/slots":
            return httpx.Response(200, json=self.slots or [])
        if path == "/tokenize":
            return httpx.Response(
                200,
                json={"tokens": list(range(len(json.loads(request.content)["content"].split())))},
            )
        if path == "/apply-template":
            words = self.render(json.loads(request.content))
            if words is None:
                return httpx.Response(500, json={"error": "template error"})
            return httpx.Response(200, json={"prompt": " ".join(words)})
        return self.chat(path, json.loads(request.content))

    def chat(self, path: str, body: dict[str, Any]) -> httpx.Response:
        words = self.render(body)
        if words is None:
            return httpx.Response(400, json={"error": "System role must come first"})
        cached = 0
        if self.cache == "prefix":
            while cached < min(len(words), len(self.last)) and words[cached] == self.last[cached]:
                cached += 1
        elif self.cache == "exact" and tuple(words) in self.seen:
            cached = len(words)
        self.last = words
        self.sizes.append(len(words))
        self.seen.add(tuple(words))
        n = len(words)
        if path == "/v1/messages":
            usage: dict[str, Any] = {"input_tokens": n - cached, "output_tokens": 1}
            if self.usage == "anthropic":
                usage["cache_read_input_tokens"] = cached
            return httpx.Response(
                200,
                json={
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [{"type": "text", "text": "hi"}],
                    "usage": usage if self.usage == "anthropic" else {"input_tokens": n},
                },
            )
        answer: dict[str, Any] = {
            "object": "chat.completion",
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": n, "completion_tokens": 1},
        }
        if self.usage == "openai":
            answer["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
        if self.usage == "ollama":
            answer["prompt_eval_count"], answer["prompt_eval_cached_count"] = n - cached, cached
        return httpx.Response(200, json=answer)

    def probe(self, kind: str | None = None, url: str = URL, **options: Any) -> Diagnosis:
        findings = probe_runtime(url, kind, transport=self.upstream.transport, **options)
        return assess(findings)


def rows_of(d: Diagnosis) -> dict[str, tuple[str, str]]:
    return {row.check: (row.found, row.status) for row in d.rows}


def text_of(d: Diagnosis, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render(d))
    return console.export_text()


CHAT = {"/v1/chat/completions", "/v1/models"}


def test_vllm_like_reports_cached_tokens_in_prompt_tokens_details() -> None:
    runtime = Runtime(usage="openai", paths=CHAT | {"/metrics"}, model="Qwen/Qwen3-8B")
    d = runtime.probe()
    rows = rows_of(d)
    assert d.kind == "openai"  # /v1/messages does not answer: detected
    assert rows["/v1/messages"] == ("404 (not served)", "warn")
    assert rows["/v1/chat/completions"] == ("200", "ok")
    assert rows["/tokenize"][1] == "unknown" and rows["/slots"][1] == "unknown"
    assert rows["usage"] == ("usage.prompt_tokens_details.cached_tokens", "ok")
    assert rows["tools in template"] == ("rendered (token counts)", "ok")
    assert rows["system mid-conversation"] == ("rendered, place unknown (token counts)", "ok")
    found, status = rows["repeated prompt"]
    repeated = runtime.sizes[-2]  # cold, repeated, diverged come last
    assert status == "ok" and found.startswith(f"{repeated:,} of {repeated:,} (100%)")
    assert rows["same first ~1,000 tokens"][1] == "ok"
    assert rows["model"] == ("Qwen3-8B", "ok")
    assert d.exit_code == 0 and d.verdict == "the runtime reuses shared prefixes"


def test_ollama_like_without_cache_fields_is_unknown_never_zero() -> None:
    runtime = Runtime(usage="none", paths=CHAT | {"/v1/messages"}, mid="drop", model="gemma3:4b")
    d = runtime.probe()
    rows = rows_of(d)
    assert d.kind == "anthropic"
    assert rows["usage"][1] == "warn" and rows["usage"][0].startswith("no cached-token field")
    assert rows["repeated prompt"][0].startswith("unknown (not reported)")
    assert rows["same first ~1,000 tokens"] == ("unknown", "unknown")
    assert rows["system mid-conversation"] == ("dropped (token counts)", "warn")
    assert rows["model"] == ("gemma3:4b: sliding-window attention", "warn")
    assert d.exit_code == 0 and "unknown" in d.verdict
    text = text_of(d, 120)
    assert "unknown in the report, never 0" in text
    assert "never sees Claude Code's environment message" in text
    assert 'kind openai with system_messages = "user"' in text
    # its native counters, where the answer has them, are read
    native = Runtime(usage="ollama", paths=CHAT)
    assert rows_of(native.probe("openai"))["usage"] == ("prompt_eval_cached_count", "ok")


def test_a_runtime_that_reuses_nothing_exits_1() -> None:
    d = Runtime(usage="openai", paths=CHAT, cache="off").probe()
    rows = rows_of(d)
    assert rows["repeated prompt"][1] == "fail" and rows["repeated prompt"][0].startswith("0 of")
    assert rows["same first ~1,000 tokens"][1] == "warn"
    assert d.exit_code == 1 and "reused no prefix" in d.verdict


def test_exact_repeats_only_is_a_warning() -> None:
    d = Runtime(usage="anthropic", paths=CHAT | {"/v1/messages"}, cache="exact").probe()
    rows = rows_of(d)
    assert rows["repeated prompt"][1] == "ok"
    assert rows["same first ~1,000 tokens"][1] == "warn"
    assert d.exit_code == 0 and "not a shared head" in d.verdict


def test_llama_cpp_like_template_read_from_the_rendered_prompt() -> None:
    slots = [{"id": 0, "n_ctx": 4096}, {"id": 1, "n_ctx": 4096}]
    paths = CHAT | {"/v1/messages", "/apply-template", "/tokenize", "/slots", "/metrics"}
    hoisting = Runtime(usage="anthropic", paths=paths, mid="hoist", tools=False, slots=slots)
    d = hoisting.probe(configured_slots=4)
    rows = rows_of(d)
    assert rows["tools in template"] == ("left out (rendered prompt)", "warn")
    assert rows["system mid-conversation"] == ("moved out of place (rendered prompt)", "warn")
    assert rows["/tokenize"] == ("200", "ok")
    # the head counted with the runtime's tokenizer, and reused
    assert "the first ~" in rows["same first ~1,000 tokens"][0]
    assert rows["slots"] == ("2 slots, 4,096 tokens of context each", "warn")
    assert "set cache_slots = 2 for this upstream (configured: 4)" in text_of(d, 120)
    refusing = Runtime(usage="anthropic", paths=paths, mid="refuse", slots=slots)
    assert rows_of(refusing.probe())["system mid-conversation"] == (
        "refused (rendered prompt)",
        "fail",
    )


def test_a_mid_conversation_system_message_refused_by_the_chat_endpoint() -> None:
    d = Runtime(usage="openai", paths=CHAT, mid="refuse").probe()
    assert rows_of(d)["system mid-conversation"] == ("refused (token counts)", "fail")
    assert 'system_messages = "user" for this upstream' in text_of(d, 120)
    assert d.exit_code == 0  # it still reuses prefixes: a failed row, not a failed runtime


def test_the_chosen_kind_must_answer() -> None:
    d = Runtime(usage="openai", paths=CHAT).probe("anthropic")
    rows = rows_of(d)
    assert rows["/v1/messages"] == ("404 (not served)", "fail")
    assert d.exit_code == 1 and "/v1/messages does not answer" in d.verdict
    assert "use kind openai" in text_of(d, 120)


def test_a_base_url_with_a_path_is_probed_as_the_openai_kind_sends_to_it() -> None:
    runtime = Runtime(usage="openai", paths=CHAT | {"/slots"}, prefix="/api", slots=[{}])
    d = runtime.probe(url=f"{URL}/api/v1")
    rows = rows_of(d)
    assert rows["/v1/chat/completions"] == ("200", "ok") and rows["/v1/models"] == ("200", "ok")
    assert rows["/slots"] == ("200", "ok")  # llama-server's own endpoints at the root
    paths = {r.url.path for r in runtime.upstream.requests}
    assert {"/api/v1/chat/completions", "/api/v1/models", "/slots"} <= paths
    assert d.exit_code == 0


def test_a_tokenize_of_another_shape_is_not_llama_cpps() -> None:
    runtime = Runtime(usage="openai", paths=CHAT | {"/tokenize"})
    original = runtime.respond

    def vllm_tokenize(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"count": 1, "max_model_len": 8192})
        return original(request)

    runtime.upstream.respond = vllm_tokenize
    rows = rows_of(runtime.probe())
    assert rows["/tokenize"] == ("200, not llama.cpp's token list", "unknown")


@pytest.mark.parametrize("width", [80, 120])
def test_the_table_fits_the_terminal(width: int) -> None:
    paths = CHAT | {"/v1/messages", "/apply-template", "/tokenize", "/slots", "/metrics"}
    runtime = Runtime(
        usage="anthropic", paths=paths, model="/models/gemma-3-270m.gguf", slots=[{"n_ctx": 32768}]
    )
    text = text_of(runtime.probe(), width)
    assert max(len(line) for line in text.splitlines()) <= width
    for check in ("/slots", "usage", "tools in template", "repeated prompt", "slots"):
        assert check in text
    assert "What the gateway does about it:" in text
    assert "verdict: the runtime reuses shared prefixes" in text


def test_template_readings() -> None:
    prompt = f"sys {TOOL_NAME} user: q answer: prefixgate probe: the assistant's first answer"
    in_place = template_from_render(f"{prompt} {MID_SYSTEM} prefixgate probe: the user's last turn")
    assert in_place == Template(True, "in_place", "rendered prompt")
    assert template_from_render(None).mid_system == "refused"
    assert template_from_counts(100, 130, 100).mid_system == "dropped"
    assert template_from_counts(100, 100, 120) == Template(False, "kept", "token counts")
    assert template_from_counts(None, None, None) == Template(None, "unknown", "token counts")


def test_model_families() -> None:
    assert model_memory("/root/.cache/gemma-3-270m-q4_k_m.gguf") == "sliding-window"
    assert model_memory("openai/gpt-oss-20b") == "sliding-window"
    assert model_memory("Qwen/Qwen3-Next-80B-A3B") == "hybrid"
    assert model_memory("Qwen/Qwen3-8B") is None
    assert model_memory(None) is None


def test_no_answer_to_the_probes_is_unknown_not_a_failure() -> None:
    timed_out = Answer(None, error="timed out")
    findings = Findings(
        URL,
        "openai",
        endpoints={"/v1/chat/completions": Answer(200, {})},
        cold=timed_out,
        repeat=timed_out,
    )
    d = assess(findings)
    assert rows_of(d)["repeated prompt"] == ("not probed", "unknown")
    assert d.exit_code == 0


def test_unreachable_urls_are_one_line_errors() -> None:
    runner = CliRunner()
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(main, ["doctor", url])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach {url}: connection failed")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    for bad in ("not-a-url", "ftp://127.0.0.1/"):
        result = runner.invoke(main, ["doctor", bad])
        assert result.exit_code == 1 and result.output.startswith("Error: ")
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_no_url_probes_the_configured_upstream(tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "prefixgate.toml"
    config.write_text(f'[upstreams.local]\nkind = "openai"\nurl = "{url}"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach {url}: connection failed")
    assert len(result.output.strip().splitlines()) == 1


def asgi(runtime: Runtime, seen: list[Request]) -> Starlette:
    """The simulated runtime on a socket (for the command, which makes its own client)."""

    async def handle(request: Request) -> Response:
        seen.append(request)
        body = await request.body()
        answer = runtime.respond(httpx.Request(request.method, str(request.url), content=body))
        return Response(answer.content, answer.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])


def test_no_url_probes_what_serve_would_use(
    tmp_path: Any, serve: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Request] = []
    runtime = Runtime(usage="openai", paths=CHAT | {"/slots"}, slots=[{"n_ctx": 8192}] * 2)
    server = serve(asgi(runtime, seen))
    config = tmp_path / "prefixgate.toml"
    config.write_text(
        f'[upstreams.local]\nkind = "openai"\nurl = "{server.url}"\n'
        'api_key_env = "DOCTOR_TEST_KEY"\ncache_slots = 2\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("DOCTOR_TEST_KEY", "sk-test")
    result = CliRunner().invoke(main, ["doctor", "--config", str(config)], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert f"prefixgate doctor: {server.url} (kind openai)" in result.output
    assert "2 slots, 8,192 tokens of context each" in result.output
    assert "verdict: the runtime reuses shared prefixes" in result.output
    assert all(r.headers["authorization"] == "Bearer sk-test" for r in seen)
    chat = [r for r in seen if r.url.path == "/v1/chat/completions"]
    assert len(chat) >= 6  # the tiny one, three template probes, cold, repeated, diverged
    runtime.cache = "off"
    result = CliRunner().invoke(main, ["doctor", server.url, "--kind", "openai"])
    assert result.exit_code == 1 and "reused no prefix" in result.output


def test_no_url_and_no_upstream_starts_the_bundled_runtime_and_stops_it(
    serve: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefixgate.runtime.local as local

    server = serve(asgi(Runtime(usage="anthropic", paths=CHAT | {"/v1/messages"}), []))
    events: list[str] = []

    class Bundled:
        def __init__(self, spec: Any) -> None:
            self.base_url = server.url

        def __enter__(self) -> Bundled:
            events.append("started")
            return self

        def __exit__(self, *exc: object) -> None:
            events.append("stopped")

    spec = type("Spec", (), {"model": Path("gemma-3-270m.gguf"), "slots": 1})()
    monkeypatch.setattr(local, "default_spec", lambda: spec)
    monkeypatch.setattr(local, "LocalRuntime", Bundled)
    monkeypatch.delenv("PREFIXGATE_CONFIG", raising=False)
    monkeypatch.delenv("PREFIXGATE_UPSTREAM", raising=False)
    result = CliRunner().invoke(main, ["doctor"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert events == ["started", "stopped"]
    assert "starting the bundled llama-server (model gemma-3-270m.gguf)" in result.output
    assert f"prefixgate doctor: {server.url} (kind anthropic)" in result.output
