"""``prefixgate doctor``: what a runtime does with the prompts the gateway sends it.

The probe runs in two halves. ``probe_runtime`` (the shell) sends a handful of
small requests with httpx and keeps what came back as ``Findings``: which
endpoints answered, the usage of a cold prompt, of the same prompt repeated
and of one that differs only after its first ~1,000 tokens, the chat
template's rendering of a tool and of a ``role: system`` message in the middle
of a conversation (read from llama-server's ``/apply-template``, or from the
prompt token counts of requests with and without them), the model, the slots.
``assess`` (pure) turns ``Findings`` into rows (what was found, ``ok`` /
``warn`` / ``fail`` / ``unknown``, what the gateway does about it) and an exit
code: 1 when the runtime cannot reuse a prefix at all, or when the endpoint of
the chosen kind does not answer; ``render`` prints them as one table.

The pure half is ``assess.py``, the shell ``probe.py``.
"""

from __future__ import annotations

from prefixgate.doctor.assess import (
    CHAT_PATHS,
    ENDPOINTS,
    MID_SYSTEM,
    TOOL_NAME,
    Answer,
    Diagnosis,
    Findings,
    Row,
    Template,
    Unreachable,
    assess,
    model_memory,
    render,
    template_from_counts,
    template_from_render,
)
from prefixgate.doctor.probe import probe_runtime, run_doctor

__all__ = [
    "CHAT_PATHS",
    "ENDPOINTS",
    "MID_SYSTEM",
    "TOOL_NAME",
    "Answer",
    "Diagnosis",
    "Findings",
    "Row",
    "Template",
    "Unreachable",
    "assess",
    "model_memory",
    "probe_runtime",
    "render",
    "run_doctor",
    "template_from_counts",
    "template_from_render",
]
