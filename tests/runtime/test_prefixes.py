"""Unit tests of saved prefixes: file names, the LRU by bytes, the folder and the
slot client (against an httpx mock transport, no llama-server)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefixgate.runtime.prefixes import (
    INDEX_FILE,
    PrefixLru,
    PrefixStore,
    SavedPrefix,
    SlotActionError,
    SlotClient,
    model_digest,
    pick_idle,
    processed_slot,
    saved_name,
)

KEY_A = "a" * 64
KEY_B = "b" * 64
MODEL_1 = "1" * 64
MODEL_2 = "2" * 64


# -- names ------------------------------------------------------------------------


def test_saved_name_is_stable_and_starts_with_the_model() -> None:
    name = saved_name(KEY_A, MODEL_1)
    assert name == saved_name(KEY_A, MODEL_1)
    assert name.startswith(MODEL_1[:12] + "-")
    assert name.endswith(".kv")
    assert all(c.isalnum() or c in "-." for c in name)


def test_saved_name_differs_by_key_and_by_model() -> None:
    names = {saved_name(k, m) for k in (KEY_A, KEY_B) for m in (MODEL_1, MODEL_2)}
    assert len(names) == 4


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789", "../../etc/passwd", "g" * 64, "a" * 8])
def test_saved_name_refuses_what_is_not_lowercase_hex(bad: str) -> None:
    with pytest.raises(ValueError):
        saved_name(bad, MODEL_1)
    with pytest.raises(ValueError):
        saved_name(KEY_A, bad)


def test_model_digest_is_the_files_sha256(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"gguf" * 300_000)
    assert model_digest(model) == hashlib.sha256(model.read_bytes()).hexdigest()


def test_model_digest_follows_a_changed_file(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"one")
    first = model_digest(model)
    model.write_bytes(b"two, longer")
    os.utime(model, ns=(1, 2_000_000_000))
    assert model_digest(model) != first
    assert model_digest(model) == hashlib.sha256(b"two, longer").hexdigest()


# -- the LRU ----------------------------------------------------------------------


def entry(name: str, size: int, tokens: int = 10) -> SavedPrefix:
    return SavedPrefix(name, size, tokens)


def test_lru_evicts_least_recently_used_first_and_stays_under_the_cap() -> None:
    lru = PrefixLru(cap=100)
    assert lru.add(entry("a", 40)) == []
    assert lru.add(entry("b", 40)) == []
    assert lru.get("a") is not None  # a is now the most recent
    assert lru.add(entry("c", 40)) == ["b"]
    assert [e.name for e in lru] == ["a", "c"]
    assert lru.total == 80
    assert lru.add(entry("d", 90)) == ["a", "c"]
    assert [e.name for e in lru] == ["d"]
    assert lru.total == 90 <= lru.cap


def test_lru_refuses_an_entry_larger_than_the_cap() -> None:
    lru = PrefixLru(cap=100)
    lru.add(entry("a", 60))
    assert lru.add(entry("huge", 101)) == ["huge"]
    assert "huge" not in lru
    assert [e.name for e in lru] == ["a"]
    assert lru.total == 60


def test_lru_replacing_an_entry_counts_its_new_size_once() -> None:
    lru = PrefixLru(cap=100)
    lru.add(entry("a", 30))
    lru.add(entry("b", 30))
    assert lru.add(entry("a", 70)) == []
    assert lru.total == 100
    assert [e.name for e in lru] == ["b", "a"]
    assert lru.remove("b") is True
    assert lru.remove("b") is False
    assert lru.total == 70


def test_lru_never_exceeds_its_cap_over_many_adds() -> None:
    lru = PrefixLru(cap=1_000)
    for i in range(500):
        lru.add(entry(f"n{i % 37}", (i * 7919) % 400 + 1))
        assert lru.total == sum(e.size for e in lru) <= 1_000


def test_lru_rejects_a_cap_below_one_byte() -> None:
    with pytest.raises(ValueError):
        PrefixLru(cap=0)


# -- the folder -------------------------------------------------------------------


def write_saved(directory: Path, key: str, size: int, model: str = MODEL_1) -> str:
    """A file as llama-server would write it for ``key``; returns its name."""
    name = saved_name(key, model)
    (directory / name).write_bytes(b"\0" * size)
    return name


def test_store_deletes_what_it_evicts_and_stays_under_the_cap(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=250)
    names = [write_saved(tmp_path, f"{i:064x}", 100) for i in range(4)]
    for name in names[:2]:
        assert store.saved(name, tokens=1000) == []
    assert store.lookup(names[0]) is not None
    assert store.saved(names[2], tokens=1000) == [names[1]]
    assert not (tmp_path / names[1]).exists()
    assert store.saved(names[3], tokens=1000) == [names[0]]
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.kv"))
    assert on_disk == store.total == 200 <= store.cap


def test_store_deletes_a_file_over_the_cap_at_once(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=50)
    name = write_saved(tmp_path, KEY_A, 51)
    assert store.saved(name, tokens=5) == [name]
    assert not (tmp_path / name).exists()
    assert store.lookup(name) is None


def test_store_keeps_its_order_and_tokens_across_restarts(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=1_000)
    a = write_saved(tmp_path, KEY_A, 100)
    b = write_saved(tmp_path, KEY_B, 100)
    store.saved(a, tokens=111)
    store.saved(b, tokens=222)
    store.lookup(a)
    again = PrefixStore(tmp_path, cap=1_000)
    assert [(e.name, e.tokens) for e in again.entries()] == [(b, 222), (a, 111)]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert [x["name"] for x in index] == [b, a]


def test_store_adopts_unknown_files_and_drops_missing_ones(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=1_000)
    a = write_saved(tmp_path, KEY_A, 100)
    store.saved(a, tokens=111)
    (tmp_path / a).unlink()
    stray = write_saved(tmp_path, KEY_B, 100)
    (tmp_path / "notes.txt").write_text("not a saved prefix")
    again = PrefixStore(tmp_path, cap=1_000)
    assert [(e.name, e.tokens) for e in again.entries()] == [(stray, 0)]
    assert (tmp_path / "notes.txt").exists()


def test_store_with_a_smaller_cap_evicts_at_start(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=1_000)
    a = write_saved(tmp_path, KEY_A, 100)
    b = write_saved(tmp_path, KEY_B, 100)
    store.saved(a, tokens=1)
    store.saved(b, tokens=1)
    smaller = PrefixStore(tmp_path, cap=150)
    assert [e.name for e in smaller.entries()] == [b]
    assert not (tmp_path / a).exists()


def test_store_lookup_of_a_deleted_file_forgets_it(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=1_000)
    a = write_saved(tmp_path, KEY_A, 100)
    store.saved(a, tokens=1)
    (tmp_path / a).unlink()
    assert store.lookup(a) is None
    assert store.entries() == []


def test_store_keeps_models_apart_and_forget_deletes(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=1_000)
    one = write_saved(tmp_path, KEY_A, 100, model=MODEL_1)
    two = write_saved(tmp_path, KEY_A, 100, model=MODEL_2)
    store.saved(one, tokens=1)
    store.saved(two, tokens=1)
    assert one != two
    store.forget(one)
    assert not (tmp_path / one).exists()
    assert [e.name for e in store.entries()] == [two]


def test_store_refuses_names_that_are_not_its_own(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, cap=1_000)
    for bad in ("../escape.kv", "index.json", "x.kv"):
        with pytest.raises(ValueError):
            store.path(bad)


# -- the slot client --------------------------------------------------------------


class FakeSlots:
    """Answers llama-server's /slots routes and records what was asked."""

    def __init__(self, *, fail: str | None = None, restored: int = 321) -> None:
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []
        self.fail = fail
        self.restored = restored

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        action = request.url.params.get("action", "")
        self.calls.append((request.method, request.url.path, body))
        if request.method == "GET":
            slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
            return httpx.Response(200, json=slots)
        if action == self.fail:
            return httpx.Response(400, json={"error": {"message": "Unable to restore slot"}})
        if action == "save":
            return httpx.Response(200, json={"id_slot": 1, "n_saved": 123, "n_written": 4567})
        if action == "restore":
            return httpx.Response(200, json={"n_restored": self.restored, "n_read": 4567})
        return httpx.Response(200, json={"id_slot": 1, "n_erased": 9})


async def test_slot_client_saves_restores_and_erases() -> None:
    fake = FakeSlots()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        client = SlotClient("http://runtime/", http)
        assert await client.idle_slot() == 1
        saved = await client.save(1, "x.kv")
        restored = await client.restore(1, "x.kv")
        erased = await client.erase(1)
    assert (saved.tokens, saved.size) == (123, 4567)
    assert (restored.tokens, restored.size) == (321, 4567)
    assert erased == 9
    assert fake.calls == [
        ("GET", "/slots", None),
        ("POST", "/slots/1", {"filename": "x.kv"}),
        ("POST", "/slots/1", {"filename": "x.kv"}),
        ("POST", "/slots/1", {}),
    ]


async def test_slot_client_raises_on_a_refused_action() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(FakeSlots(fail="restore"))) as http:
        with pytest.raises(SlotActionError, match="HTTP 400"):
            await SlotClient("http://runtime", http).restore(0, "x.kv")


async def test_slot_client_treats_an_empty_restore_as_a_failure() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(FakeSlots(restored=0))) as http:
        with pytest.raises(SlotActionError, match="no tokens"):
            await SlotClient("http://runtime", http).restore(0, "x.kv")


def test_pick_idle_takes_an_empty_slot_then_the_least_recently_used() -> None:
    busy = {"id": 0, "is_processing": True}
    assert pick_idle([busy]) is None
    old, new = {"id": 0, "id_task": 3}, {"id": 1, "id_task": 9}
    assert pick_idle([new, old]) == 0  # the older task loses least
    assert pick_idle([old, new, {"id": 2}]) == 2  # holds nothing
    assert pick_idle([busy, new]) == 1


def test_processed_slot_is_the_one_whose_task_changed() -> None:
    before = [{"id": 0}, {"id": 1, "id_task": 4}]
    assert processed_slot(before, [{"id": 0, "id_task": 7}, {"id": 1, "id_task": 4}]) == 0
    assert processed_slot(before, [{"id": 0}, {"id": 1, "id_task": 7}]) == 1
    assert processed_slot(before, before) is None  # nothing ran
    both = [{"id": 0, "id_task": 7}, {"id": 1, "id_task": 8}]
    assert processed_slot(before, both) is None  # which one is not known
