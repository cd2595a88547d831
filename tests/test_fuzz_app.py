"""The whole-app fuzzer (``fuzz/fuzz_app.py``) keeps working: a short run is clean.

The full run (200,000 inputs, both upstream kinds) is not part of the suite; its
figures and command are in ``fuzz/README.md``. This runs the same core function
for a few hundred inputs: every input is judged (no exception out of the app, no
500, one audit row per request), and a saved input replays the same way.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_app.py"


@pytest.fixture(scope="module")
def fuzz_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_app", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_app"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def test_short_run_on_both_kinds_is_clean(fuzz_app: ModuleType, tmp_path: Path) -> None:
    stats = await fuzz_app.fuzz(400, seed=20261206, save_dir=tmp_path)
    assert set(stats.kinds) == {"anthropic", "openai"}
    for kind, s in stats.kinds.items():
        assert s.inputs == 200, kind
        assert sum(s.statuses.values()) == 200, kind
        assert 200 in s.statuses and 400 in s.statuses, (kind, s.statuses)  # both sides reached
    failing = {label: count for label, count in stats.labels.items()}
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert not failing, f"failing inputs {failing}; saved for --replay: {saved}"
    assert not stats.failed


async def test_an_input_saved_and_replayed(fuzz_app: ModuleType, tmp_path: Path) -> None:
    """A case survives its trip through the saved JSON and runs again the same way."""
    generator = fuzz_app.Generator(random.Random(7), fuzz_app.load_corpus())
    case = generator.case("openai")
    outcome = fuzz_app.Outcome(status=599, rows=0)
    path = fuzz_app.save(tmp_path, 1, case, outcome, "example")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert fuzz_app.Case.from_json(raw["case"]) == case
    assert await fuzz_app.replay(path) == 0


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_absurd_token_counts_leave_a_row(
    fuzz_app: ModuleType, kind: str, stream: bool
) -> None:
    """Found by the fuzzer: an upstream reporting a 400-digit cached token count
    overflowed the miss estimate, a 500 (non-streamed) or an exception out of the
    app mid-stream, and no audit row either way."""

    class Absurd(fuzz_app.Upstream):  # type: ignore[misc,name-defined]
        def _answer(self, path: str, stream: bool) -> tuple[list[bytes], str]:
            pieces, content_type = super()._answer(path, stream)
            return [p.replace(b"1000", b"1" * 400) for p in pieces], content_type

    gateway = fuzz_app.make_gateway(kind, "strip", Absurd(kind))
    body = fuzz_app.dumps({**fuzz_app.small_request(random.Random(1)), "stream": stream})
    headers = [(b"host", b"localhost"), (b"content-type", b"application/json")]
    case = fuzz_app.Case(kind, "strip", "POST", "/v1/messages", b"", headers, [body], "ok", 0)
    async with gateway.app.router.lifespan_context(gateway.app):
        for _ in range(2):  # the second one is compared with the first
            outcome = await fuzz_app.run_case(gateway, case)
            assert outcome.crash is None, outcome.crash
            assert (outcome.status, outcome.rows) == (200, 1)
