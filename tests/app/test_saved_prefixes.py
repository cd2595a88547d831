"""Saved prefixes through the whole app (app/saved.py), against a fake llama-server.

The fake (``httpx.MockTransport``) has one slot and the ``/slots`` API: a save
writes the slot's tokens into a file of the saved-prefix folder, a restore
reads them back; a request reports as cached the tokens the slot holds when it
is sent there (``id_slot``) right after a restore (``refuse`` turns that off),
else what a test sets.
``/tokenize`` counts one token per 4 characters.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.app import records_of, running
from support.upstream import MESSAGE

from prefixgate.app import saved as saved_module
from prefixgate.app.gateway import create_app
from prefixgate.app.saved import SavedPrefixes, forget_gone_models, scratch_name
from prefixgate.config import build_settings
from prefixgate.core.pipeline import rewrite
from prefixgate.runtime.prefixes import PrefixStore, model_digest
from prefixgate.runtime.restore import PRIMING_MESSAGE, priming_body
from prefixgate.store.audit import AuditRecord, MemoryAudit

URL = "http://runtime.test:8080"
PROMPT = 5000
SAVED_TOKENS = 3000  # the system prompt and tools (about 60% of PROMPT here) and the stub
SYSTEM = "You are a coding agent.\n" + "Keep the prompt prefix stable.\n" * 40


OK = [{"type": "text", "text": "ok"}]  # the answer's content


def tool(name: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"arg": {"type": "string"}}}
    return {"name": name, "description": f"{name} does its job well. " * 30, "input_schema": schema}


def request(text: str, system: str = SYSTEM) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "system": [{"type": "text", "text": system}],
        "tools": [tool("Bash"), tool("Read")],
        "messages": [{"role": "user", "content": text + " and its details" * 500}],
    }


def tokenized(body: dict[str, Any]) -> httpx.Response:
    """The fakes' ``/tokenize``: a token per 4 characters."""
    return httpx.Response(200, json={"tokens": [7] * (len(body["content"]) // 4)})


class FakeLlama:
    """One slot, the slot actions, and what was asked of it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.transport = httpx.MockTransport(self._handle)
        self.asked: list[tuple[str, dict[str, Any]]] = []  # (path?action, body)
        self.slot = 0  # tokens the slot holds
        self.task: int | None = None  # the slot's last task, as /slots shows it
        self.files: dict[str, int] = {}  # tokens in each saved file
        self.restored = 0  # tokens in the slot from the last restore, until a request
        self.refuse = False
        self.cached = 0

    def restart(self) -> None:
        self.restored = self.slot = 0
        self.task = None

    def messages(self) -> list[dict[str, Any]]:
        return [b for p, b in self.asked if p == "/v1/messages"]

    def actions(self) -> list[str]:
        """``save NAME`` / ``restore NAME``, NAME the saved prefix's or ``scratch``."""
        out = []
        for path, body in self.asked:
            if path.startswith("/slots/0?"):
                name = body.get("filename", "")
                action = path.split("?")[1]
                out.append(f"{action} {'scratch' if name == scratch_name(0) else 'prefix'}")
        return out

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if path == "/tokenize":
            return tokenized(body)
        if path == "/slots":
            task = {} if self.task is None else {"id_task": self.task}
            return httpx.Response(200, json=[{"id": 0, "is_processing": False, **task}])
        if path.startswith("/slots/"):
            action = request.url.params["action"]
            self.asked.append((f"{path}?{action}", body))
            target = self.folder / body["filename"]
            if action == "save":
                target.write_bytes(b"kv" * 1000)
                self.files[target.name] = self.slot
                return httpx.Response(200, json={"n_saved": self.slot, "n_written": 2000})
            if not target.is_file() or not self.files.get(target.name):
                return httpx.Response(400, json={"error": {"message": "failed to load"}})
            self.restored = self.slot = self.files[target.name]
            return httpx.Response(200, json={"n_restored": self.slot, "n_read": 2000})
        self.asked.append((path, body))
        self.task = (self.task or 0) + 1
        priming = body["messages"] == [{"role": "user", "content": PRIMING_MESSAGE}]
        self.slot = SAVED_TOKENS if priming else PROMPT
        cached = self.cached
        if body.get("id_slot") == 0 and self.restored and not self.refuse:
            cached = self.restored
        self.restored = 0
        usage = {
            "input_tokens": PROMPT - cached,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": 1,
        }
        return httpx.Response(200, json={**MESSAGE, "content": OK, "usage": usage})


class FakeRuntime:
    def __init__(self, llama: FakeLlama) -> None:
        self.llama = llama
        self.running = True
        self.starts = 0

    def is_running(self) -> bool:
        return self.running

    def start(self) -> None:
        self.starts += 1
        self.running = True
        self.llama.restart()

    def restart(self) -> None:
        self.start()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "saved"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF model weights")
    return path


def gateway(
    llama: FakeLlama, folder: Path, model: Path, runtime: FakeRuntime | None = None
) -> tuple[Any, SavedPrefixes]:
    settings = build_settings({"upstreams": {"local": {"url": URL, "cache_slots": 1}}}, {}, {})
    prefixes = SavedPrefixes(URL, PrefixStore(folder, 1 << 30), model, runtime)
    app = create_app(settings, transport=llama.transport, audit=MemoryAudit(), prefixes=prefixes)
    return app, prefixes


async def send(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text


def entry_name(folder: Path) -> str:
    (entry,) = PrefixStore(folder, 1 << 30).entries()
    return entry.name


def shared_tokens(body: dict[str, Any]) -> int:
    """Tokens of ``body``'s prompt it shares with its priming request (the system
    prompt and tools a restore puts back), by the fake tokenizer, scaled to PROMPT."""
    raw = json.dumps(body).encode()
    mine, primed = ([p.text for p in rewrite(b).view.pieces] for b in (raw, priming_body(raw)))
    shared = 0
    while mine[shared] == primed[shared]:
        shared += 1
    tokens = [len(text) // 4 for text in mine]
    return round(sum(tokens[:shared]) * PROMPT / sum(tokens))


async def scraped(client: httpx.AsyncClient) -> dict[str, float]:
    """``GET /metrics``: each ``prefixgate_`` sample's value by name, summed over labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("prefixgate_") and not sample.name.endswith("_created"):
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


async def until(check: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def saved_once(llama: FakeLlama, folder: Path, model: Path) -> None:
    """A first gateway: one request, its prefix saved in the background."""
    app, prefixes = gateway(llama, folder, model)
    async with running(app) as client:
        await send(client, request("fix the bug"))
        await until(lambda: prefixes.counts.saves == 1 and not prefixes.busy)
        await records_of(app, 1)


async def test_a_new_prefix_is_saved_by_a_priming_request_after_the_answer(
    folder: Path, model: Path
) -> None:
    llama = FakeLlama(folder)
    await saved_once(llama, folder, model)
    first, priming = llama.messages()
    assert "id_slot" not in first  # nothing to restore: forwarded as it came
    assert priming["messages"] == [{"role": "user", "content": PRIMING_MESSAGE}]
    assert (priming["max_tokens"], priming["stream"]) == (1, False)
    assert "id_slot" not in priming  # /v1/messages ignores it: the slot that ran it is saved
    assert priming["system"] == first["system"] and priming["tools"] == first["tools"]
    # the slot's own prompt kept aside and put back: the conversation goes on from it
    assert llama.actions() == ["save scratch", "save prefix", "restore scratch"]
    assert llama.slot == PROMPT and not (folder / scratch_name(0)).exists()
    (entry,) = PrefixStore(folder, 1 << 30).entries()
    assert entry.name.startswith(model_digest(model)[:12]) and entry.tokens == SAVED_TOKENS


async def test_after_a_restart_the_saved_prefix_is_restored_and_expected(
    folder: Path, model: Path
) -> None:
    llama = FakeLlama(folder)
    await saved_once(llama, folder, model)
    llama.restart()
    llama.asked.clear()
    app, prefixes = gateway(llama, folder, model)  # a new gateway: a new start
    async with running(app) as client:
        await send(client, request("another task"))
        await send(client, request("another task, more"))
        records = await records_of(app, 2)
        metrics = await scraped(client)
    assert llama.actions() == ["restore prefix"]  # once: the key is seen since
    first, second = llama.messages()
    assert first["id_slot"] == 0 and "id_slot" not in second
    assert (prefixes.counts.restores, prefixes.counts.restored_tokens) == (1, SAVED_TOKENS)
    assert prefixes.counts.saves == 0  # saved before: not again
    rec: AuditRecord = records[0]
    assert rec.cached_tokens == SAVED_TOKENS
    # the restored system prompt and tools are what the runtime should serve
    assert rec.runtime_expected_tokens is not None and rec.runtime_expected_tokens > 500
    assert rec.oracle_tokens is not None and rec.oracle_tokens >= rec.runtime_expected_tokens
    assert (rec.lost_by_runtime, rec.lost_cause) == (0, "none")
    # the restore put the system prompt and tools in the slot for the first request only
    assert rec.restored_tokens == shared_tokens(request("another task")) > 500
    assert records[1].restored_tokens is None
    assert metrics["prefixgate_saved_prefix_restores_total"] == 1
    assert metrics["prefixgate_restored_tokens_total"] == rec.restored_tokens
    assert metrics["prefixgate_saved_prefix_saves_total"] == 0  # saved by the first gateway
    assert metrics["prefixgate_saved_prefix_save_failures_total"] == 0
    assert metrics["prefixgate_saved_prefix_restore_failures_total"] == 0
    assert metrics["prefixgate_runtime_restarts_total"] == 0
    assert metrics["prefixgate_saved_prefix_files"] == 1
    assert metrics["prefixgate_saved_prefix_bytes"] == (folder / entry_name(folder)).stat().st_size


async def test_a_restore_the_runtime_then_does_not_reuse_is_partial_restore_refused(
    folder: Path, model: Path
) -> None:
    llama = FakeLlama(folder)
    await saved_once(llama, folder, model)
    llama.restart()
    llama.refuse = True
    app, _ = gateway(llama, folder, model)
    async with running(app) as client:
        await send(client, request("another task"))
        (rec,) = await records_of(app, 1)
    assert rec.cached_tokens == 0
    assert rec.runtime_expected_tokens is not None and rec.runtime_expected_tokens > 500
    assert rec.lost_by_runtime == rec.runtime_expected_tokens
    assert rec.lost_cause == "partial_restore_refused"


async def test_a_runtime_that_stopped_is_started_again_and_restores_again(
    folder: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saved_module, "WATCH_EVERY_S", 0.01)
    llama = FakeLlama(folder)
    await saved_once(llama, folder, model)
    llama.restart()
    llama.asked.clear()
    runtime = FakeRuntime(llama)
    app, prefixes = gateway(llama, folder, model, runtime)
    async with running(app) as client:
        await send(client, request("another task"))
        await records_of(app, 1)
        runtime.running = False  # it died
        await until(lambda: runtime.starts == 1 and prefixes.counts.restarts == 1)
        await send(client, request("another task"))
        await prefixes.restart_runtime()
        await send(client, request("another task"))
        records = await records_of(app, 3)
        metrics = await scraped(client)
    assert llama.actions() == ["restore prefix"] * 3
    assert metrics["prefixgate_runtime_restarts_total"] == 2
    assert metrics["prefixgate_saved_prefix_restores_total"] == 3
    assert [r.restored_tokens for r in records] == [shared_tokens(request("another task"))] * 3
    assert [m.get("id_slot") for m in llama.messages()] == [0, 0, 0]
    assert [r.cached_tokens for r in records] == [SAVED_TOKENS] * 3
    first, *after = records
    assert (first.lost_by_runtime, first.lost_cause) == (0, "none")
    for rec in after:  # the saved prefix served; the request's own tail lost to the restart
        assert rec.runtime_expected_tokens is not None and rec.lost_by_runtime is not None
        assert rec.runtime_expected_tokens > SAVED_TOKENS
        assert rec.lost_by_runtime == rec.runtime_expected_tokens - SAVED_TOKENS
        assert rec.lost_cause == "restarted"


async def test_a_file_the_runtime_refuses_is_forgotten_and_saved_again(
    folder: Path, model: Path
) -> None:
    llama = FakeLlama(folder)
    await saved_once(llama, folder, model)
    (entry,) = PrefixStore(folder, 1 << 30).entries()
    (folder / entry.name).write_bytes(b"")  # the store still lists it
    llama.restart()
    llama.asked.clear()
    original = llama._handle

    def refusing(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        if request.url.params.get("action") == "restore" and body["filename"] == entry.name:
            llama.asked.append(("/slots/0?restore", body))
            return httpx.Response(400, json={"error": {"message": "failed to load"}})
        return original(request)

    llama.transport = httpx.MockTransport(refusing)
    app, prefixes = gateway(llama, folder, model)
    async with running(app) as client:
        await send(client, request("another task"))
        (rec,) = await records_of(app, 1)
        assert prefixes.counts.restore_failures == 1
        assert "id_slot" not in llama.messages()[0]
        assert rec.status == 200
        await send(client, request("a third task"))
        await until(lambda: prefixes.counts.saves == 1 and not prefixes.busy)
        metrics = await scraped(client)
    assert rec.restored_tokens is None  # the restore failed: nothing was put back
    assert metrics["prefixgate_saved_prefix_restore_failures_total"] == 1
    assert metrics["prefixgate_saved_prefix_saves_total"] == 1
    assert "prefixgate_saved_prefix_restores_total" not in metrics
    assert llama.actions() == ["restore prefix", "save scratch", "save prefix", "restore scratch"]


async def test_other_upstreams_are_left_alone(folder: Path, model: Path) -> None:
    llama = FakeLlama(folder)
    settings = build_settings({"upstreams": {"local": {"url": URL}}}, {}, {})
    prefixes = SavedPrefixes("http://elsewhere.test:9", PrefixStore(folder, 1 << 30), model)
    app = create_app(settings, transport=llama.transport, audit=MemoryAudit(), prefixes=prefixes)
    async with running(app) as client:
        await send(client, request("fix the bug"))
        await records_of(app, 1)
    assert llama.actions() == [] and len(llama.messages()) == 1
    assert prefixes.plan.pending == 0 and prefixes.counts.saves == 0


def test_files_of_a_model_that_is_gone_are_forgotten(folder: Path, tmp_path: Path) -> None:
    old, new = tmp_path / "old.gguf", tmp_path / "new.gguf"
    old.write_bytes(b"old weights")
    new.write_bytes(b"new weights")
    store = PrefixStore(folder, 1 << 30)
    for model in (old, new):
        digest = model_digest(model)
        assert forget_gone_models(store, model, digest) == []
        name = f"{digest[:12]}-{'0' * 40}.kv"
        (folder / name).write_bytes(b"kv")
        store.saved(name, 10)
    assert len(store.entries()) == 2
    old_digest = model_digest(old)
    old.unlink()
    assert forget_gone_models(store, new, model_digest(new)) == [old_digest[:12]]
    (left,) = store.entries()
    assert left.name.startswith(model_digest(new)[:12])
    assert forget_gone_models(PrefixStore(folder, 1 << 30), new, model_digest(new)) == []


class TwoSlotLlama:
    """Two slots; like llama-server's ``/v1/messages``, every request lands on the
    slot whose prompt shares most with it, here always slot 1 (the conversation's),
    whatever ``id_slot`` says."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.transport = httpx.MockTransport(self._handle)
        self.tokens = [0, 0]  # what each slot holds
        self.tasks: list[int | None] = [None, None]
        self.files: dict[str, int] = {}
        self.actions: list[str] = []  # "save 1 scratch-slot-1.kv", ...

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if path == "/tokenize":
            return tokenized(body)
        if path == "/slots":
            listed = [{"id": i, "is_processing": False} for i in (0, 1)]
            for entry, task in zip(listed, self.tasks, strict=True):
                if task is not None:
                    entry["id_task"] = task
            return httpx.Response(200, json=listed)
        if path.startswith("/slots/"):
            slot, action, name = (
                int(path.rsplit("/", 1)[1]),
                request.url.params["action"],
                body["filename"],
            )
            self.actions.append(f"{action} {slot} {name}")
            if action == "save":
                (self.folder / name).write_bytes(b"kv")
                self.files[name] = self.tokens[slot]
                return httpx.Response(200, json={"n_saved": self.tokens[slot], "n_written": 2})
            self.tokens[slot] = self.files[name]
            return httpx.Response(200, json={"n_restored": self.tokens[slot], "n_read": 2})
        priming = body["messages"] == [{"role": "user", "content": PRIMING_MESSAGE}]
        self.tokens[1] = SAVED_TOKENS if priming else PROMPT
        self.tasks[1] = max((t for t in self.tasks if t is not None), default=0) + 1
        usage = {"input_tokens": PROMPT, "cache_read_input_tokens": 0, "output_tokens": 1}
        return httpx.Response(200, json={**MESSAGE, "content": OK, "usage": usage})


async def test_with_two_slots_the_slot_that_ran_the_priming_is_saved_and_put_back(
    folder: Path, model: Path
) -> None:
    llama = TwoSlotLlama(folder)
    settings = build_settings({"upstreams": {"local": {"url": URL, "cache_slots": 2}}}, {}, {})
    prefixes = SavedPrefixes(URL, PrefixStore(folder, 1 << 30), model)
    app = create_app(settings, transport=llama.transport, audit=MemoryAudit(), prefixes=prefixes)
    async with running(app) as client:
        await send(client, request("fix the bug"))
        await until(lambda: prefixes.counts.saves == 1 and not prefixes.busy)
    name = entry_name(folder)
    assert llama.actions == [
        "save 0 scratch-slot-0.kv",  # empty: nothing to put back there
        "save 1 scratch-slot-1.kv",  # the conversation
        f"save 1 {name}",  # the slot the priming request ran in, not the idle one
        "restore 1 scratch-slot-1.kv",
    ]
    assert llama.files[name] == SAVED_TOKENS and llama.tokens == [0, PROMPT]
    assert not list(folder.glob("scratch-*"))
