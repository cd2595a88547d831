"""Detect and parse Claude Code's attribution block.

Claude Code opens its system prompt with a line such as::

    x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli; cch=fa690;

or, in newer builds, a JSON payload::

    x-anthropic-billing-header: {"cc_is_subagent":true}

Its values change per conversation, per subagent and sometimes per request, so
it defeats every prefix cache that does not know about it.

Detection is deliberately narrow:

* only at offset 0 of the system prompt: the first text block of an array
  ``system``, or the first line of a string ``system``;
* only the fixed header structure: the header name, then either a JSON object or
  one or more ``key=value`` pairs separated by ``; `` (trailing ``;`` optional);
  the header ends at a line break, at the end of the text, or, when the pairs end
  with ``;``, right before glued text (``...cch=fa690;You are Claude Code``),
  never before whitespace (``...=1; and prose`` is prose, not a header).

Anything else, including the same text quoted later in the prompt, in a user
message or in a tool result, is not an attribution block. So is a header name
in another case (``X-ANTHROPIC-BILLING-HEADER:``) or one after a byte-order
mark or any other character: Claude Code writes neither, and a prompt that
does is text someone wrote, left whole (never half stripped). A ``system``
that is ``""``, ``[]``, ``null``, or opens with a block that is not text holds
no block either.

The same fields also travel as HTTP request headers: ``x-anthropic-billing-header``
itself (its value in the same ``key=value;`` or JSON grammar, with or without the
``x-anthropic-billing-header:`` prefix) and the header a gateway in front of us
wrote with ``preserve_as_metadata`` (``x-prefixgate-attribution`` unless
configured otherwise). ``detect_headers`` finds them by name; a header of one of
those names is attribution metadata whatever its value, and ``form`` says how its
value parsed (``kv``, ``json`` or ``unparsed``, then with no fields).

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

HEADER_NAME = "x-anthropic-billing-header"

_PREFIX = re.compile(r"x-anthropic-billing-header:[ \t]*")
_KEY = r"[A-Za-z_][A-Za-z0-9_.-]*"
_VALUE = r"[^;\s]*"
# Pairs separated by "; " (any horizontal whitespace), optional final ";".
_KV = re.compile(rf"(?P<pairs>{_KEY}={_VALUE}(?:;[ \t]*{_KEY}={_VALUE})*)(?P<semi>;?)")
_PAIR = re.compile(rf"({_KEY})=({_VALUE})")
_LINE_END = re.compile(r"[ \t]*(?:\r\n|\n|\r|$)")

Form = Literal["kv", "json"]
Location = Literal["block", "string"]


@dataclass(frozen=True)
class Attribution:
    """One attribution block found at the head of a system prompt.

    ``header`` is the header itself; ``removed`` is the exact text a strip
    removes (the header plus the line break that ends it, if any), so
    ``text.startswith(removed)`` holds for the text it was found in.
    """

    header: str
    removed: str
    form: Form
    fields: Mapping[str, Any] = field(default_factory=dict)
    location: Location = "block"
    whole_block: bool = True
    glued: bool = False

    @property
    def separator(self) -> str:
        """The line break (or nothing) that followed the header."""
        return self.removed[len(self.header) :]

    @property
    def is_subagent(self) -> bool:
        value = self.fields.get("cc_is_subagent")
        return value is True or value == "true"

    @property
    def entrypoint(self) -> str | None:
        value = self.fields.get("cc_entrypoint")
        return value if isinstance(value, str) else None


def parse_header(text: str) -> Attribution | None:
    """Parse an attribution header at offset 0 of ``text``.

    Returns ``None`` unless ``text`` starts with a well-formed header. The
    result's ``location`` and ``whole_block`` describe ``text`` alone; callers
    that know where the text came from adjust ``location``.
    """
    head = _PREFIX.match(text)
    if head is None:
        return None
    start = head.end()
    if text.startswith("{", start):
        return _parse_json(text, start)
    return _parse_kv(text, start)


def _parse_json(text: str, start: int) -> Attribution | None:
    try:
        payload, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):  # thousands of levels in a system text
        return None
    if not isinstance(payload, dict):
        return None
    return _finish(text, end, "json", payload, glued_ok=False)


def _parse_kv(text: str, start: int) -> Attribution | None:
    match = _KV.match(text, start)
    if match is None:
        return None
    fields = dict(_PAIR.findall(match.group("pairs")))
    glued_ok = bool(match.group("semi"))
    return _finish(text, match.end(), "kv", fields, glued_ok=glued_ok)


def _finish(
    text: str, end: int, form: Form, fields: Mapping[str, Any], *, glued_ok: bool
) -> Attribution | None:
    line_end = _LINE_END.match(text, end)
    if line_end is not None:
        header = text[:end]
        removed = text[: line_end.end()]
        glued = False
    elif glued_ok and not text[end].isspace():
        header = removed = text[:end]
        glued = True
    else:
        return None
    return Attribution(
        header=header,
        removed=removed,
        form=form,
        fields=fields,
        whole_block=len(removed) == len(text),
        glued=glued,
    )


def detect(body: Mapping[str, Any]) -> Attribution | None:
    """Find the attribution block at the head of ``body['system']``, if any."""
    system = body.get("system")
    if isinstance(system, str):
        found = parse_header(system)
        return None if found is None else _at(found, "string")
    if isinstance(system, list) and system:
        first = system[0]
        if isinstance(first, dict) and first.get("type") == "text":
            text = first.get("text")
            if isinstance(text, str):
                found = parse_header(text)
                return None if found is None else _at(found, "block")
    return None


def _at(found: Attribution, location: Location) -> Attribution:
    return Attribution(
        header=found.header,
        removed=found.removed,
        form=found.form,
        fields=found.fields,
        location=location,
        whole_block=found.whole_block,
        glued=found.glued,
    )


def render_fields(fields: Mapping[str, Any]) -> str:
    """Render fields as ``k=v; k=v;`` (JSON-form values compactly encoded)."""
    parts = []
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={text};")
    return " ".join(parts)


HeaderForm = Literal["kv", "json", "unparsed"]


@dataclass(frozen=True)
class HeaderAttribution:
    """Attribution metadata found in one HTTP request header.

    ``name`` is the header's name in lower case, ``value`` its value as sent.
    """

    name: str
    value: str
    form: HeaderForm
    fields: Mapping[str, Any] = field(default_factory=dict)

    def as_attribution(self) -> Attribution:
        """The header as a block would be, for the policies' pure functions."""
        line = f"{HEADER_NAME}: {render_fields(self.fields)}"
        return Attribution(
            header=line,
            removed=line,
            form="json" if self.form == "json" else "kv",
            fields=self.fields,
            location="block",
        )

    def record(self) -> dict[str, Any]:
        """What the audit record keeps of it: the form and the fields, never the raw value."""
        return {"form": self.form, "fields": dict(self.fields)}


def parse_header_value(value: str) -> tuple[HeaderForm, Mapping[str, Any]]:
    """Parse an attribution header's value: ``(form, fields)``.

    The whole value (surrounding whitespace aside) must be one header in the
    block's grammar, optionally still prefixed ``x-anthropic-billing-header:``;
    anything else is ``("unparsed", {})``.
    """
    text = value.strip()
    if not _PREFIX.match(text):
        text = f"{HEADER_NAME}: {text}"
    found = parse_header(text)
    if found is None or not found.whole_block:
        return "unparsed", {}
    return found.form, found.fields


def detect_headers(
    headers: Iterable[tuple[str, str]], names: Iterable[str] = (HEADER_NAME,)
) -> tuple[HeaderAttribution, ...]:
    """Every header among ``headers`` whose name is one of ``names`` (case-insensitive).

    In the order they came; a name sent twice gives two entries.
    """
    wanted = {name.lower() for name in names}
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in wanted:
            form, fields = parse_header_value(value)
            out.append(HeaderAttribution(lower, value, form, fields))
    return tuple(out)
