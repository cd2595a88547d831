"""Property tests over the whole rewrite: any input gives a valid request or a PrefixgateError.

Inputs are arbitrary bytes, near-valid request bodies of random shapes (the
attribution line in random places, unicode, deep nesting, huge counts) and the
recorded Claude Code requests with keys dropped, types changed and bytes cut.
The coverage-guided harness in ``fuzz/`` drives the same target; the last test
runs it for a bounded number of inputs.
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixgate.core.errors import InvalidRequest, PrefixgateError
from prefixgate.core.limits import Limits
from prefixgate.core.pipeline import (
    Rewrite,
    RewriteOptions,
    parse_request,
    rewrite,
    rewrite_parsed,
)
from prefixgate.core.policy import METADATA_HEADER, Policy

REPO_ROOT = Path(__file__).resolve().parents[2]
HARNESS = REPO_ROOT / "fuzz" / "fuzz_pipeline.py"

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LINE = "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli;"
HEADERS = (
    LINE,
    LINE + "\n",
    LINE + "\r\n",
    LINE + "You are Claude Code, Anthropic's official CLI for Claude.",
    LINE + " cch=fa690;",
    LINE[:-1],
    LINE[:30],
    'x-anthropic-billing-header: {"cc_is_subagent":true}',
    'x-anthropic-billing-header: {"cc_is_subagent":true}\nrest',
    'x-anthropic-billing-header: {"a": [1, {"b": null}], "c": 1.5}',
    'x-anthropic-billing-header: {"a":',
    "x-anthropic-billing-header: [1, 2]",
    "x-anthropic-billing-header: ",
    "x-anthropic-billing-header:cc_version=\u00e9\u6f22\U0001f600;",
    "x-anthropic-billing-header: k=v; \ud800=1;",
)

OPTIONS = (
    *(
        RewriteOptions(policy=policy, require_max_tokens=required)
        for policy in Policy
        for required in (True, False)
    ),
    RewriteOptions(policy=Policy.PRESERVE_AS_METADATA, metadata_header=METADATA_HEADER),
)


# ------------------------------------------------------------------ the target


def run(raw: bytes, options: RewriteOptions) -> Rewrite | PrefixgateError:
    """The whole rewrite from raw bytes; fail on anything but a result or a PrefixgateError."""
    try:
        result = rewrite(raw, options)
    except PrefixgateError as exc:
        assert isinstance(exc.message, str) and exc.message
        assert 400 <= exc.status < 600
        return exc
    check_rewrite(raw, result, options)
    return result


def check_rewrite(raw: bytes, result: Rewrite, options: RewriteOptions) -> None:
    """What the upstream gets is a JSON object with model and messages the gateway accepts."""
    out = json.loads(result.body)
    assert isinstance(out, dict)
    assert isinstance(out.get("model"), str) and out["model"]
    assert isinstance(out.get("messages"), list)
    assert result.model == out["model"]
    again = parse_request(result.body, require_max_tokens=options.require_max_tokens)
    assert again["messages"] == out["messages"]
    if not result.changed:
        assert result.body == raw
    assert len(result.key.hex) == 64


def run_every_policy(raw: bytes) -> list[Rewrite | PrefixgateError]:
    outcomes = [run(raw, options) for options in OPTIONS]
    # the proxy's path (parse once, then rewrite) agrees with the one-call rewrite
    try:
        body = parse_request(raw)
    except PrefixgateError:
        return outcomes
    for options in OPTIONS[::2]:
        check_rewrite(raw, rewrite_parsed(raw, body, options), options)
    return outcomes


# ------------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(HEADERS),
    st.builds(
        lambda before, header, after: before + header + after,
        st.sampled_from(["", "", " ", "\n", "prose "]),
        st.sampled_from(HEADERS),
        st.text(max_size=30),
    ),
)
text_block = st.fixed_dictionaries(
    {"type": st.just("text"), "text": texts},
    optional={"cache_control": st.just({"type": "ephemeral"}), "extra": values},
)
other_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["tool_use", "tool_result", "image", "thinking", "text", ""])},
    optional={
        "content": st.one_of(texts, st.lists(text_block, max_size=3), values),
        "input": values,
        "text": values,
        "id": st.text(max_size=10),
    },
)
blocks = st.one_of(text_block, text_block, other_block, values)
contents = st.one_of(texts, st.lists(blocks, max_size=5), values)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "system"]), "content": contents},
            optional={"cache_control": values},
        ),
        st.fixed_dictionaries({"role": values}, optional={"content": contents}),
        values,
    ),
    max_size=6,
)
tools = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["Bash", "Read", "mcp__srv__tool", "", "\u6f22"])},
            optional={"input_schema": values, "description": texts, "cache_control": values},
        ),
        values,
    ),
    max_size=4,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.just("claude-opus-4-8"), st.text(max_size=12), values),
    "messages": st.one_of(messages, messages, values),
    "system": st.one_of(
        texts, st.lists(blocks, max_size=4), st.lists(text_block, max_size=3), values
    ),
    "tools": st.one_of(tools, values),
    "max_tokens": st.one_of(st.integers(min_value=-2, max_value=2**70), values),
    "stream": st.one_of(st.booleans(), values),
    "metadata": st.one_of(
        st.fixed_dictionaries({"user_id": st.text(max_size=10)}),
        st.fixed_dictionaries({"system": texts}),
        values,
    ),
    "temperature": values,
}
USUAL = {"model": 0.95, "messages": 0.95, "max_tokens": 0.9, "system": 0.8, "tools": 0.5}


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, strategy in FIELDS.items():
        present = draw(st.integers(0, 99)) < 100 * USUAL.get(name, 0.2)
        if present:
            body[name] = draw(strategy)
    return body


@st.composite
def encodings(draw: st.DrawFn, body: Any) -> bytes:
    style = draw(st.sampled_from(["js", "python", "js-ascii", "python-ascii", "indent"]))
    ascii_only = style.endswith("ascii")
    if style == "indent":
        text = json.dumps(body, indent=draw(st.integers(0, 3)), ensure_ascii=False)
    elif style.startswith("js"):
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=ascii_only)
    else:
        text = json.dumps(body, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass" if draw(st.booleans()) else "backslashreplace")


DEEP = "\x00deep\x00"


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    """A request with one value nested (or only opened) far past the depth limit, or just at it."""
    body = draw(bodies())
    levels = draw(
        st.one_of(st.integers(0, 80), st.sampled_from([62, 63, 64, 65, 1_000, 5_000, 50_000]))
    )
    where = draw(st.sampled_from(["top", "message", "system", "tool"]))
    if where == "top":
        body["x"] = DEEP
    elif where == "message":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "t", "v": DEEP}]}]
    elif where == "system":
        body["system"] = [{"type": "text", "text": draw(texts), "v": DEEP}]
    else:
        body["tools"] = [{"name": "Bash", "input_schema": DEEP}]
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}"), ('[{"a":', "}]")]))
    if opener == '[{"a":':
        levels //= 2
    closed = draw(st.booleans())
    nest = opener * levels + "0" + (closer * levels if closed else "")
    return json.dumps(body).replace(json.dumps(DEEP), nest, 1).encode()


# ------------------------------------------------------------------ properties


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(raw: bytes) -> None:
    run_every_policy(raw)


@FUZZ
@given(st.one_of(st.text(max_size=200), values.map(json.dumps)))
def test_any_json_or_text(text: str) -> None:
    run_every_policy(text.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=200)
@given(st.data())
def test_near_valid_requests(data: st.DataObject) -> None:
    raw = data.draw(encodings(data.draw(bodies())))
    run_every_policy(raw)


@FUZZ
@given(deep_bodies())
def test_deep_nesting(raw: bytes) -> None:
    outcomes = run_every_policy(raw)
    for outcome in outcomes:
        if isinstance(outcome, InvalidRequest) and "max_json_depth" in outcome.message:
            assert outcome.message.startswith(
                "request exceeds the gateway's limit max_json_depth=64"
            )


@settings(FUZZ, max_examples=8)
@given(
    st.sampled_from(["messages", "blocks"]),
    st.sampled_from([-1, 0, 1]),
    st.sampled_from(list(Policy)),
)
def test_huge_counts(kind: str, offset: int, policy: Policy) -> None:
    limits = Limits()
    one = {"role": "user", "content": [{"type": "text", "text": LINE}]}
    if kind == "messages":
        body = {"model": "m", "max_tokens": 1, "messages": [one] * (limits.max_messages + offset)}
    else:
        per_message = [{"type": "text", "text": "x"}] * 1_000
        count = limits.max_blocks // 1_000
        body = {
            "model": "m",
            "max_tokens": 1,
            "system": [{"type": "text", "text": LINE}]
            + [{"type": "text", "text": "s"}] * (999 + offset),
            "messages": [{"role": "user", "content": per_message}] * (count - 1),
        }
    outcome = run(json.dumps(body).encode(), RewriteOptions(policy=policy))
    if offset > 0:
        assert isinstance(outcome, InvalidRequest)
        assert f"max_{kind}=" in outcome.message
    else:
        assert isinstance(outcome, Rewrite)


# ------------------------------------------------------------ real requests


def load_bodies(directory: Path) -> list[bytes]:
    found = sorted(directory.glob("*.jsonl"))
    assert found, f"no recorded requests (*.jsonl) in {directory}"
    raws = []
    for path in found:
        with path.open("rb") as fh:
            raws.extend(json.loads(line)["body"].encode("utf-8") for line in fh if line.strip())
    return raws


@pytest.fixture(scope="module")
def recorded(corpus_directory: Path) -> list[bytes]:
    return load_bodies(corpus_directory)


def test_every_recorded_request_rewrites_under_every_policy(recorded: list[bytes]) -> None:
    for raw in recorded:
        for options in OPTIONS:
            assert isinstance(run(raw, options), Rewrite)


def _pick_container(data: st.DataObject, body: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """A random object or array inside ``body``, by a random walk from the top."""
    node: dict[str, Any] | list[Any] = body
    while data.draw(st.integers(0, 3)) > 0:
        children = list(node.values()) if isinstance(node, dict) else node
        inner = [c for c in children if isinstance(c, dict | list) and c]
        if not inner:
            break
        node = data.draw(st.sampled_from(inner))
    return node


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["drop", "retype", "header", "truncate", "bytes", "splice"]))
    if kind in ("truncate", "bytes", "splice"):
        at = data.draw(st.integers(0, len(raw)))
        if kind == "truncate":
            return raw[:at]
        if kind == "bytes":
            return raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at + 1 :]
        other = data.draw(
            st.sampled_from([b'"', b"{", b"]", b",", b"\\", b"\\u", b"\xc3", b"null"])
        )
        return raw[:at] + other + raw[at:]
    body = json.loads(raw)
    node = _pick_container(data, body)
    if not node:
        return raw
    key: Any = (
        data.draw(st.sampled_from(list(node)))
        if isinstance(node, dict)
        else data.draw(st.integers(0, len(node) - 1))
    )
    if kind == "drop":
        del node[key]
    elif kind == "retype":
        node[key] = data.draw(values)
    else:
        old = node[key]
        text = old if isinstance(old, str) else ""
        at = data.draw(st.integers(0, len(text)))
        node[key] = text[:at] + data.draw(st.sampled_from(HEADERS)) + text[at:]
    return data.draw(encodings(body))


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_mutated_recorded_requests(recorded: list[bytes], data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(recorded))
    for _ in range(data.draw(st.integers(1, 3))):
        try:
            raw = mutate(data, raw)
        except ValueError:  # an earlier byte mutation left no JSON to walk
            break
    for options in data.draw(st.lists(st.sampled_from(OPTIONS), min_size=1, max_size=3)):
        run(raw, options)


# ------------------------------------------------------------ bugs found here, fixed


def test_splice_rewrites_the_top_level_system_only() -> None:
    """A nested ``system`` key with the same value is not the one rewritten."""
    system = json.dumps(LINE + "\nYou are")
    raw = (
        f'{{"model": "m", "max_tokens": 5, "system": {system}, "messages": [], '
        f'"metadata": {{"system":{system}}}}}'
    ).encode()
    result = rewrite(raw, RewriteOptions(policy=Policy.STRIP))
    assert json.loads(result.body) == result.parsed


def test_deep_json_attribution_header_is_not_a_crash() -> None:
    header = "x-anthropic-billing-header: " + '{"a":' * 100_000
    body = {"model": "m", "max_tokens": 5, "messages": [], "system": header}
    run(json.dumps(body).encode(), RewriteOptions())


# ------------------------------------------------------------ the atheris harness


def test_atheris_harness_runs_clean(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.fail(
            "atheris is not installed: install the dev extra (pip install -e '.[dev]')",
            pytrace=False,
        )
    seeds = tmp_path / "seeds"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    subprocess.run(
        [sys.executable, str(HARNESS), "--write-seeds", str(seeds), "--max-seed-bytes", "4096"],
        check=True,
        env=env,
        timeout=60,
    )
    assert any(seeds.iterdir())
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "-runs=3000",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(seeds),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    executed = re.search(r"stat::number_of_executed_units: (\d+)", output)
    assert executed, output[-4000:]
    assert int(executed.group(1)) >= 3000
