"""Request bodies for the prompt model's tests (``core/prompt.py``, ``core/promptcut.py``,
``core/promptdiff.py``): the 2.1.197 and 2.1.332 layouts, property strategies, and
helpers that view and compare them."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from prefixgate.core.pipeline import Rewrite, RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import PromptView
from prefixgate.core.promptdiff import Change, first_change

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


EPHEMERAL = {"type": "ephemeral"}


LINE = "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli; cch=fa690;"


IDENTITY = "You are Claude Code, Anthropic's official CLI for Claude."


INSTRUCTIONS = (
    "You are an interactive agent.\n"
    "# Environment\n"
    " - You are powered by the model named Opus 4.8.\n"
    " - Primary working directory: /home/dev/proj"
)


CONTEXT = "<system-reminder>\n# claudeMd\nIndent with tabs.\n</system-reminder>\n"


MCP = "mcp__projfs__list_dir"


def tool(name: str, description: str = "does things", **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": schema},
    }


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": LINE},
            {"type": "text", "text": IDENTITY},
            {"type": "text", "text": INSTRUCTIONS, "cache_control": EPHEMERAL},
        ],
        "tools": [tool("Bash"), tool("Read"), tool(MCP)],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": CONTEXT},
                    {"type": "text", "text": "hello"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "list files", "cache_control": EPHEMERAL}],
            },
        ],
    }
    body.update(overrides)
    return body


def with_line(body: dict[str, Any], line: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["system"][0]["text"] = line
    return out


def run(body: dict[str, Any], policy: Policy = Policy.STRIP) -> Rewrite:
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return rewrite(raw, RewriteOptions(policy=policy))


def view(body: dict[str, Any], policy: Policy = Policy.STRIP) -> PromptView:
    return run(body, policy).view


def change(before: dict[str, Any], after: dict[str, Any], policy: Policy = Policy.STRIP) -> Change:
    found = first_change(view(before, policy), view(after, policy))
    assert found is not None, "expected a change"
    return found


def names(v: PromptView) -> list[str]:
    return [p.name for p in v.pieces]


def find_tool(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in body["tools"] if t["name"] == name)
    return found


OTHER_LINE = "x-anthropic-billing-header: cc_version=2.1.197.776; cc_entrypoint=cli; cch=fa690;"


OTHER_CCH = "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli; cch=0b1c2;"


TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


BLOCK = st.fixed_dictionaries(
    {"type": st.just("text"), "text": TEXT}, optional={"cache_control": st.just(EPHEMERAL)}
)


MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": st.one_of(TEXT, st.lists(BLOCK, min_size=1, max_size=3)),
    }
)


MESSAGES = st.lists(MESSAGE, max_size=4)


TOOLS = st.lists(
    st.builds(tool, st.sampled_from(["Bash", "Read", "Write", MCP, "mcp__git__log"]), TEXT),
    max_size=4,
    unique_by=lambda t: t["name"],
)


SYSTEM = st.one_of(TEXT, st.lists(BLOCK, max_size=3))


def body_of(system: Any, tools: list[dict[str, Any]], messages: list[Any]) -> dict[str, Any]:
    return {"model": "m", "system": system, "tools": tools, "messages": messages}


def strip_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_markers(v) for v in value]
    return value


ENVIRONMENT_332 = (
    "# Environment\n"
    "You have been invoked in the following environment: \n"
    " - Primary working directory: /home/dev/proj\n"
    " - Is a git repository: true\n"
    " - Platform: linux\n"
    "\n"
    "You are powered by the model named Opus 5.5. The exact model ID is claude-opus-5-5.\n"
    "\n"
)


DEFERRED_INTRO = (
    "The following deferred tools are now available via ToolSearch. Their schemas are NOT "
    'loaded. Use ToolSearch with query "select:<name>[,<name>...]" to load them:\n'
)


AGENTS = "Available agent types for the Agent tool:\n- Explore: searches.\n\n"


GIT = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
    "# gitStatus\nCurrent branch: master\n\nStatus:\n(clean)\n</system-reminder>"
)


COMMITS = "<system-reminder>\nEnd git commit messages with: Co-Authored-By: x\n</system-reminder>\n"


def system_message(
    cwd: str = "/home/dev/proj",
    deferred: tuple[str, ...] = ("CronCreate", "WebFetch"),
    date: str = "2026-12-06",
    as_list: bool = True,
) -> dict[str, Any]:
    text = (
        ENVIRONMENT_332.replace("/home/dev/proj", cwd)
        + DEFERRED_INTRO
        + "".join(f"{name}\n" for name in deferred)
        + "\n"
        + AGENTS
        + f"Today's date is {date}."
    )
    content: Any = [{"type": "text", "text": text, "cache_control": EPHEMERAL}] if as_list else text
    return {"role": "system", "content": content}


def request_332(
    prompt: str = "say hi", turns: int = 0, *, loaded: tuple[dict[str, Any], ...] = (), **kw: Any
) -> dict[str, Any]:
    """A body in the 2.1.332 layout: context and git status in messages[0], the
    environment, deferred tools and date in the role "system" message at messages[1]."""
    git = kw.pop("git", GIT)
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": git},
                {"type": "text", "text": COMMITS},
                {"type": "text", "text": prompt},
            ],
        },
        system_message(**kw),
    ]
    for n in range(turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"a{n}"}]})
        messages.append({"role": "user", "content": f"q{n}"})
    placeholder = {**tool("DeferredToolPlaceholder"), "defer_loading": True}
    return {
        "model": "claude-opus-5-5",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.0b8;"},
            {"type": "text", "text": IDENTITY, "cache_control": EPHEMERAL},
            {"type": "text", "text": "You are an agent.", "cache_control": EPHEMERAL},
        ],
        "tools": [tool("Bash"), tool("ToolSearch"), *loaded, placeholder, tool("Write")],
        "messages": messages,
    }
