"""scripts/record-corpus's recorder against the real current client: what it records
now has the shape of the shipped corpus (the same requests, in the same order).

    claude -p -> prefixgate serve --record -> the recorder's scripted upstream

Bodies are compared by shape, not byte for byte: the date, ids and the machine's OS
line differ between recordings (corpus/README.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLIENT = Path(
    os.environ.get("PREFIXGATE_CLAUDE_CURRENT_BIN")
    or REPO / "node_modules" / "claude-code-current" / "bin" / "claude.exe"
)
BLOCK = re.compile(r"cc_version=([0-9a-f.]+);")


def shape(line: str) -> dict[str, Any]:
    """What must not change between two recordings of the same script."""
    row = json.loads(line)
    body = json.loads(row["body"])
    return {
        "path": row["path"],
        "block": BLOCK.findall(body["system"][0]["text"]),
        "subagent": "cc_is_subagent=true" in body["system"][0]["text"],
        "system": [len(block["text"]) for block in body["system"][1:]],
        "tools": [tool["name"] for tool in body.get("tools", [])],
        "messages": [
            (
                m["role"],
                "str"
                if isinstance(m["content"], str)
                else [block["type"] for block in m["content"]],
            )
            for m in body["messages"]
        ],
        "top": sorted(body),
    }


def recorded(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CLIENT.exists():
        pytest.fail(
            f"Claude Code (current) not found at {CLIENT}: run `npm install` in the "
            "repository root (or set PREFIXGATE_CLAUDE_CURRENT_BIN)"
        )
    out = tmp_path_factory.mktemp("corpus")
    command = [sys.executable, str(REPO / "bench" / "record_corpus.py"), "--client", str(CLIENT),
               "--out", str(out), "--only", "print", "--only", "remote-host"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def version() -> str:
    manifest = json.loads((REPO / "package.json").read_text(encoding="utf-8"))
    spec: str = manifest["devDependencies"]["claude-code-current"]
    return spec.rsplit("@", 1)[-1]


def test_a_new_recording_has_the_shape_of_the_shipped_one(fresh: Path) -> None:
    name = f"claude-code-{version()}.jsonl"
    new, shipped = recorded(fresh / name), recorded(REPO / "corpus" / name)
    assert len(new) == len(shipped)
    for index, (a, b) in enumerate(zip(new, shipped, strict=True)):
        assert shape(a) == shape(b), f"request {index}"


def test_the_new_recording_is_anonymised(fresh: Path) -> None:
    for path in fresh.glob("*.jsonl"):
        text = path.read_text(encoding="utf-8")
        assert "prefixgate-corpus-" not in text
        assert "/home/dev/proj" in text
        for line in text.splitlines():
            row = json.loads(line)
            json.loads(row["body"])
            assert not {"x-api-key", "authorization"} & {k.lower() for k in row["headers"]}


def test_the_non_loopback_recording_when_root(fresh: Path) -> None:
    name = f"claude-code-{version()}-remote-host.jsonl"
    if os.geteuid() != 0:  # the recorder needs root for its /etc/hosts alias
        assert not (fresh / name).exists()
        return
    lines = recorded(fresh / name)
    assert [shape(a) for a in lines] == [shape(b) for b in recorded(REPO / "corpus" / name)]
    assert all(
        json.loads(line)["headers"]["host"].startswith("gateway.prefixgate.test:") for line in lines
    )
    assert "gateway.prefixgate.test" not in Path("/etc/hosts").read_text()
