"""The saved-prefix decisions (runtime/restore.py), offline: which key restores,
which is saved and when, the priming body, the runtime gate, models gone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from prefixgate.core.prompt import PromptView, prompt_view
from prefixgate.runtime.local import LocalRuntimeSpec, build_command
from prefixgate.runtime.prefixes import SavedPrefix, saved_name
from prefixgate.runtime.restore import (
    MIN_PREFIX_CHARS,
    PRIMING_MESSAGE,
    ModelMark,
    PrefixPlan,
    RuntimeGate,
    gone_models,
    prefix_chars,
    priming_body,
    with_slot,
    worth_saving,
)

DIGEST = "ab" * 32
KEY_A, KEY_B = "1" * 64, "2" * 64


class Files:
    """A fake store: the saved files by name, and the lookups asked."""

    def __init__(self, *names: str) -> None:
        self.names = {n: SavedPrefix(n, 100, 1500) for n in names}
        self.asked: list[str] = []

    def lookup(self, name: str) -> SavedPrefix | None:
        self.asked.append(name)
        return self.names.get(name)


def test_a_key_with_a_file_is_restored_once_per_start() -> None:
    plan = PrefixPlan(DIGEST)
    files = Files(saved_name(KEY_A, DIGEST))
    first = plan.arrive(KEY_A, files.lookup)
    assert first.restore is not None and first.restore.tokens == 1500 and not first.save
    again = plan.arrive(KEY_A, files.lookup)
    assert (again.restore, again.save) == (None, False)
    assert files.asked == [first.name]  # a key seen since the start is not looked up
    plan.restarted()
    assert plan.arrive(KEY_A, files.lookup).restore is not None


def test_a_key_without_a_file_is_saved_once_per_model() -> None:
    plan = PrefixPlan(DIGEST)
    files = Files()
    arrival = plan.arrive(KEY_B, files.lookup)
    assert arrival.restore is None and arrival.save
    assert arrival.name == saved_name(KEY_B, DIGEST)
    assert plan.queue(KEY_B, b"{}") and not plan.queue(KEY_B, b"{}")
    job = plan.next_save()
    assert job is not None and (job.key, job.name) == (KEY_B, arrival.name)
    assert plan.next_save() is None
    plan.restarted()
    assert not plan.arrive(KEY_B, files.lookup).save  # saved (or being saved) already
    assert not plan.queue(KEY_B, b"{}")
    plan.failed(job)  # a failed save may be tried again by a later request
    assert plan.arrive(KEY_B, files.lookup).save


def test_another_model_has_its_own_files() -> None:
    files = Files(saved_name(KEY_A, DIGEST))
    other = PrefixPlan("cd" * 32)
    arrival = other.arrive(KEY_A, files.lookup)
    assert arrival.restore is None and arrival.save
    assert arrival.name != saved_name(KEY_A, DIGEST)


def test_a_failed_restore_is_saved_again() -> None:
    plan = PrefixPlan(DIGEST)
    files = Files(saved_name(KEY_A, DIGEST))
    assert plan.arrive(KEY_A, files.lookup).restore is not None
    plan.restore_failed(KEY_A)
    del files.names[saved_name(KEY_A, DIGEST)]  # the shell forgot the file
    assert plan.arrive(KEY_A, files.lookup).save


def test_the_save_queue_is_bounded() -> None:
    plan = PrefixPlan(DIGEST, max_pending=2)
    keys = [f"{i:064x}" for i in range(3)]
    assert [plan.queue(k, b"{}") for k in keys] == [True, True, False]
    assert plan.pending == 2


def test_the_priming_body_keeps_system_and_tools_and_one_short_message() -> None:
    forwarded = {
        "model": "m",
        "system": [{"type": "text", "text": "You are a coding agent."}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "a long task " * 50}],
        "max_tokens": 32000,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "u"},
    }
    body = json.loads(priming_body(json.dumps(forwarded).encode(), slot=2))
    assert body["system"] == forwarded["system"] and body["tools"] == forwarded["tools"]
    assert body["messages"] == [{"role": "user", "content": PRIMING_MESSAGE}]
    assert (body["max_tokens"], body["stream"], body["id_slot"]) == (1, False, 2)
    assert "thinking" not in body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":1}', b'{"a":1,"id_slot":3}'),
        (b'{"a": {"b": []}} \n', b'{"a": {"b": []},"id_slot":3}'),
        (b"{}", b'{"id_slot":3}'),
    ],
)
def test_with_slot_appends_the_slot(body: bytes, expected: bytes) -> None:
    assert with_slot(body, 3) == expected
    assert json.loads(with_slot(body, 3))["id_slot"] == 3


def test_with_slot_refuses_what_is_not_an_object() -> None:
    with pytest.raises(ValueError):
        with_slot(b"[1]", 0)


def test_models_whose_file_is_gone_or_changed() -> None:
    here = ModelMark("/m/a.gguf", 10, 1)
    changed = ModelMark("/m/b.gguf", 10, 1)
    gone = ModelMark("/m/c.gguf", 10, 1)
    now = {"/m/a.gguf": here, "/m/b.gguf": ModelMark("/m/b.gguf", 11, 2)}
    known = {"aaa": here, "bbb": changed, "ccc": gone}
    assert gone_models(known, now.get) == ["bbb", "ccc"]


async def test_an_action_waits_for_the_requests_under_way_and_holds_new_ones() -> None:
    gate = RuntimeGate()
    await gate.enter()
    action = asyncio.ensure_future(gate.exclusive())
    await asyncio.sleep(0)
    assert not action.done()
    await gate.enter()  # requests still go in while an action waits
    gate.leave()
    await asyncio.sleep(0)
    assert not action.done()
    gate.leave()
    await asyncio.wait_for(action, 1)
    assert gate.held
    late = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0)
    assert not late.done() and gate.in_flight == 0  # held: the request waits
    gate.release()
    await asyncio.wait_for(late, 1)
    assert gate.in_flight == 1
    gate.leave()
    assert gate.idle


async def test_handover_lets_exactly_the_restoring_request_in() -> None:
    gate = RuntimeGate()
    await gate.exclusive()
    other = asyncio.ensure_future(gate.exclusive())
    gate.handover()
    await asyncio.sleep(0)
    assert gate.in_flight == 1 and not gate.held and not other.done()
    gate.leave()
    await asyncio.wait_for(other, 1)
    assert gate.held
    gate.release()
    with pytest.raises(RuntimeError):
        gate.leave()
    with pytest.raises(RuntimeError):
        gate.release()


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    gate = RuntimeGate()
    await gate.enter()
    waiting = asyncio.ensure_future(gate.exclusive())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.leave()
    assert gate.idle and not gate.held


def test_the_runtime_starts_with_its_slot_save_folder(tmp_path: Path) -> None:
    binary, model, template = (tmp_path / n for n in ("llama-server", "m.gguf", "t.jinja"))
    off = LocalRuntimeSpec(binary=binary, model=model, template=template)
    assert "--slot-save-path" not in build_command(off, 8080)
    on = LocalRuntimeSpec(binary, model, template, slot_save_path=tmp_path / "saved")
    command = build_command(on, 8080)
    assert command[command.index("--slot-save-path") + 1] == f"{tmp_path / 'saved'}/"


def test_a_short_prefix_is_not_worth_a_file() -> None:
    def view(system: str) -> PromptView:
        body = {
            "model": "m",
            "system": system,
            "messages": [{"role": "user", "content": "x" * 9000}],
        }
        return prompt_view(body, None)

    assert prefix_chars(view("short")) == 5  # the message is not part of it
    assert not worth_saving(view("short"))
    assert worth_saving(view("y" * MIN_PREFIX_CHARS))
