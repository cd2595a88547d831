"""Expected vs actual cached tokens, and the cause of every miss.

Pure: the tracker is plain state fed in arrival order, token counts are
passed in, nothing here does I/O.

For each request two earlier ones are references: the same session and agent's
previous request, and the last request on the same upstream. What an ideal
prefix cache should serve is the longer common prefix with either (in pieces,
see ``core/prompt.py``; compared in ``core/promptdiff.py``), converted to
tokens. The cause, first match wins:

``model_changed`` ... ``messages_rewritten``
    the prompt stops extending the session's previous request at that
    piece (for a session's first request: at that piece of the upstream's
    last request, unless another tenant sent it; a different conversation
    there is no change): the
    attribution block, a system block, a built-in or MCP tool, a tool
    loaded through ToolSearch, the deferred-tool list, the project context,
    the git status, the environment, the date, an earlier message
``evicted_by_other_session``
    the prefix was unchanged but the upstream served less than expected, and
    another session or agent used it in between
``upstream_dropped``
    the prefix was unchanged, nobody came in between, and it served less
``none``
    nothing to explain

Claude Code's own names are used where it has them (``system_prompt_changed``,
``tools_changed``, ``model_changed``, ``messages_rewritten``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from prefixgate.core.prompt import PromptView
from prefixgate.core.promptdiff import Change, common_pieces, first_change

CAUSES = (
    "none",
    "model_changed",
    "attribution_changed",
    "system_prompt_changed",
    "tools_changed",
    "mcp_tools_changed",
    "tool_loaded",
    "deferred_tools_changed",
    "project_context_changed",
    "git_status_changed",
    "environment_changed",
    "date_changed",
    "messages_rewritten",
    "evicted_by_other_session",
    "upstream_dropped",
)
# Each cause the way a person would act on it (``report``, the dashboard, the bench).
CAUSE_WORDS = {
    "none": "no miss",
    "model_changed": "another model than the session's previous request: each switch "
    "starts the prefix again; keep one model per session",
    "attribution_changed": "the attribution block differs: use policy strip or normalize "
    "for this upstream",
    "system_prompt_changed": "the system prompt differs (settings, output style, agent types, "
    "skills or another client version): expected once after such a change",
    "tools_changed": "a built-in tool was added, removed or redefined (a client upgrade or "
    "permission settings): expected once after the change",
    "mcp_tools_changed": "an MCP tool definition changed: keep the MCP server's version "
    "fixed within a project",
    "tool_loaded": "ToolSearch loaded a tool definition into tools[], ahead of the "
    "conversation: turn on the tool-load policy for this upstream",
    "deferred_tools_changed": "the deferred tool list differs: an MCP server was added or "
    "removed between these sessions; expected once after changing the MCP configuration",
    "project_context_changed": "the project context differs (CLAUDE.md, memory): expected "
    "once after editing them",
    "git_status_changed": "the git status snapshot differs (a commit or an edit between "
    "sessions): expected, Claude Code takes it when a session starts",
    "environment_changed": "the environment differs: the working directory differs, or the "
    "OS or the model line; start sessions of a project from the same directory",
    "date_changed": "a new day: the date line changed; expected once a day",
    "messages_rewritten": "an earlier turn was edited, rewound or compacted: expected after "
    "/compact, /rewind or an edit",
    "evicted_by_other_session": "another session or agent used the upstream in between and "
    "pushed this prefix out: give the runtime more slots or cache memory, or more replicas",
    "upstream_dropped": "the prefix was unchanged and nobody came in between, but the upstream "
    "served less: check its cache settings (context size, slot reuse, --swa-full)",
}
# Less than this much below expected is noise (template tokens, a retokenised
# boundary), not a miss.
TOLERANCE_TOKENS = 64
TOLERANCE_SHARE = 0.05


@dataclass(frozen=True)
class Owner:
    """Whose request it is: the cache is expected to follow a (tenant, session, agent)."""

    tenant: str
    session: str
    agent: str

    def describe(self, viewer_tenant: str) -> str:
        """How another request's owner is named to ``viewer_tenant`` (never
        another tenant's session id)."""
        if self.tenant != viewer_tenant:
            return "a request of another tenant"
        return f"session {self.session[:8]} ({self.agent})"


@dataclass(frozen=True)
class Comparison:
    """Where one request stands against its references, before any token count."""

    change: Change | None  # the prefix change that explains a miss, if any
    reference: str | None  # "session" or "upstream": what ``change`` is against
    session_change: Change | None
    upstream_change: Change | None
    session_common: int  # pieces shared with the session's previous request
    upstream_common: int  # pieces shared with the upstream's last request
    has_session_ref: bool
    has_upstream_ref: bool
    interloper: str | None  # who used the upstream since this session's last request

    @property
    def predicted_cause(self) -> str:
        return self.change.cause if self.change else "none"


def compare(
    view: PromptView,
    owner: Owner,
    session_prev: PromptView | None,
    upstream_prev: tuple[Owner, PromptView] | None,
    last_owner: Owner | None = None,
) -> Comparison:
    """``view`` against its session's previous prompt and ``upstream_prev``, the
    upstream's last prompt of the same tenant; ``last_owner`` is whoever used the
    upstream last, any tenant (default: ``upstream_prev``'s), named only as "a
    request of another tenant" when it is not ``owner``'s."""
    # Side requests (titles, summaries) carry a new short conversation each time.
    side = owner.agent == "side"
    session_change = found = None
    if session_prev is not None:
        found = first_change(session_prev, view)
        session_change = _in_place(found, new_conversation=side)
    upstream_change = None
    interloper = None
    if upstream_prev is not None:
        prev_owner, prev_view = upstream_prev
        other = prev_owner.session != owner.session or side
        across = prev_owner.session != owner.session
        if prev_view is not session_prev or across:  # else the session's own, found above
            found = first_change(prev_view, view, across_sessions=across)
        upstream_change = _in_place(found, new_conversation=other)
        if prev_owner.tenant != owner.tenant:
            # another tenant's prompt is never described: a change against it
            # would name its pieces (tools, lines of text)
            upstream_change = None
    if last_owner is None and upstream_prev is not None:
        last_owner = upstream_prev[0]
    if last_owner is not None and last_owner != owner and session_prev is not None:
        interloper = last_owner.describe(owner.tenant)
    if session_prev is not None:
        change, reference = session_change, "session"
    else:
        change, reference = upstream_change, "upstream"
    return Comparison(
        change=change,
        reference=reference if change else None,
        session_change=session_change,
        upstream_change=upstream_change,
        session_common=common_pieces(session_prev, view),
        upstream_common=(
            common_pieces(upstream_prev[1], view)
            if upstream_prev and upstream_prev[0].tenant == owner.tenant
            else 0
        ),
        has_session_ref=session_prev is not None,
        has_upstream_ref=upstream_prev is not None,
        interloper=interloper,
    )


def _in_place(change: Change | None, *, new_conversation: bool) -> Change | None:
    """``change``, unless it is only that another conversation's messages differ."""
    if new_conversation and change is not None and change.section == "messages":
        return None
    return change


class CacheTracker:
    """The last prompt per upstream and per (tenant, session, agent).

    A request is compared only with prompts of its own tenant (what it is told,
    counts included, never depends on another tenant's text); the upstream's
    last user of any tenant is kept only to say that *someone* came in between.

    The gateway compares a request when it arrives and remembers it once the
    upstream answered it (a failed request cached nothing). At most
    ``limit`` owners are kept (least recently seen forgotten first); views hold
    prompt text, so this is memory only, never written anywhere.
    """

    def __init__(self, limit: int = 256) -> None:
        self._by_owner: OrderedDict[tuple[str, Owner], PromptView] = OrderedDict()
        self._by_upstream: dict[tuple[str, str], tuple[Owner, PromptView]] = {}
        self._last_owner: dict[str, Owner] = {}
        self._limit = limit

    def compare(
        self, upstream: str, owner: Owner, view: PromptView, *, scope: str = ""
    ) -> Comparison:
        """``view`` against the owner's and the upstream's last remembered prompts.

        ``scope`` narrows the owner's reference to one cache: a replica of an
        upstream holds only the turns that were sent to it.
        """
        mine = self._by_owner.get((scope, owner))
        ours = self._by_upstream.get((upstream, owner.tenant))
        return compare(view, owner, mine, ours, self._last_owner.get(upstream))

    def remember(self, upstream: str, owner: Owner, view: PromptView, *, scope: str = "") -> None:
        """Record that ``upstream`` processed ``view`` for ``owner``."""
        self._by_owner[(scope, owner)] = view
        self._by_owner.move_to_end((scope, owner))
        while len(self._by_owner) > self._limit:
            self._by_owner.popitem(last=False)
        self._by_upstream[(upstream, owner.tenant)] = (owner, view)
        self._last_owner[upstream] = owner

    def observe(
        self,
        upstream: str,
        owner: Owner,
        view: PromptView,
        *,
        remember: bool = True,
        scope: str = "",
    ) -> Comparison:
        """``compare``, then ``remember`` unless told not to (a token count uses
        no cache, so it cannot evict anything)."""
        result = self.compare(upstream, owner, view, scope=scope)
        if remember:
            self.remember(upstream, owner, view, scope=scope)
        return result


def prefix_tokens(
    view: PromptView, pieces: int, tokens: Mapping[str, int], prompt_tokens: int | None
) -> int:
    """Tokens in the first ``pieces`` pieces of ``view``.

    ``tokens`` maps piece digests to their token counts. Pieces are counted
    bare, without the chat template's tokens; when the upstream reported the
    prompt's size, the count is scaled to it, so template tokens are shared out
    in proportion.
    """
    counts = [tokens.get(p.digest, 0) for p in view.pieces]
    shared = sum(counts[:pieces])
    total = sum(counts)
    if prompt_tokens is None or total == 0:
        return shared
    return min(prompt_tokens, round(shared * prompt_tokens / total))


def expected_tokens(
    view: PromptView, comparison: Comparison, tokens: Mapping[str, int], prompt_tokens: int | None
) -> int:
    """What an ideal prefix cache holding both references would serve."""
    pieces = max(comparison.session_common, comparison.upstream_common)
    return prefix_tokens(view, pieces, tokens, prompt_tokens)


def is_miss(expected: int | None, actual: int | None) -> bool:
    """Whether ``actual`` falls short of ``expected`` by more than noise."""
    if expected is None or actual is None:
        return False
    return actual < expected - max(TOLERANCE_TOKENS, TOLERANCE_SHARE * expected)


@dataclass(frozen=True)
class Verdict:
    cause: str
    changed_segment: str | None
    detail: str | None


def verdict(comparison: Comparison, expected: int | None, actual: int | None) -> Verdict:
    """The cause for one request, once its actual cached tokens are known."""
    change = comparison.change
    if change is not None:
        against = "previous request of the session"
        if comparison.reference == "upstream":
            against = "last request on the upstream"
        detail = f"{change.detail} (vs the {against})"
        if is_miss(expected, actual):
            detail += (
                f"; and the upstream served only {actual:,} of the {expected:,} tokens before it"
            )
        return Verdict(change.cause, change.segment, detail)
    if not is_miss(expected, actual):
        return Verdict("none", None, None)
    shortfall = f"served {actual:,} of {expected:,} expected tokens"
    if comparison.interloper is not None:
        return Verdict(
            "evicted_by_other_session",
            None,
            f"{comparison.interloper} used the upstream in between; {shortfall}",
        )
    return Verdict("upstream_dropped", None, f"prefix unchanged; {shortfall}")
