"""Oracle, expected and actual: what an upstream could, should and did serve from cache.

Pure: plain state fed in arrival order, no I/O, no clock. Nothing here keeps
prompt text: a prompt is remembered as its *chain*, one integer per piece
(``chain[i] = hash((chain[i-1], name_i, digest_i))``, starting from the
model's name; see ``core/prompt.py`` for the pieces), so two prompts share
their first ``i`` pieces exactly when they share ``chain[i-1]``. The hashes
are Python's (salted per process): they never leave the process.

Three numbers per request, in pieces here, in tokens once the pieces are
counted (``misses.prefix_tokens``):

``oracle``
    the longest prefix shared with *any* earlier prompt sent to the same
    upstream replica, whatever tenant, session or agent sent it. Counted,
    never shown: no text, owner or id of another request is kept or told.
    ``PrefixOracle`` holds every prefix of the remembered prompts in one
    dict, least recently used first; touching a prompt touches its pieces
    from the last to the first, so a prefix is always at least as recent as
    any longer one and eviction keeps the set prefix-closed (a lookup is a
    binary search over the new prompt's chain). Bounded by ``max_nodes``
    prefixes per replica (about 0.2 KB each: ``DEFAULT_ORACLE_NODES`` is
    about 45 MB at most; ``bench/oracle.py``).
``expected``
    what the runtime should have served, given what it can hold
    (``RuntimeModel``): ``Capacity.slots`` slots, each holding the last
    prompt processed in it, plus an optional RAM prompt cache of
    ``Capacity.tokens`` tokens, a least-recently-used list of the prompts
    pushed out of a slot. As llama-server does, a prompt lands in the slot
    sharing the longest prefix with it (else the least recently used one)
    and reuses that prefix; when a prompt in the RAM cache shares a longer
    prefix, it is restored into the slot (and leaves the cache). The slot's
    previous prompt goes to the RAM cache unless the new one extends it.
    Every slot counts as idle: a request is compared when it arrives and
    remembered once the upstream answered it. Expected is the longest prefix
    the model holds, partial RAM matches included: a runtime that throws one
    away (llama-server restores only a cached prompt the new one extends
    exactly) loses it, and says so below; ``Reach.exact`` is what exact
    restores alone would serve. A restart empties nothing in the model (a
    runtime that saves its prefixes would still have them): what it loses
    then is named ``restarted``.
``actual``
    what the upstream reported (``cached_tokens`` in the audit record).

``lost_by_runtime`` is ``expected - actual`` when that is more than noise
(``misses.is_miss``), else 0. Its cause, the first that applies:

``partial_restore_refused``
    the expected prefix came from a RAM-cached prompt that the new one does
    not extend exactly (a partial match, longer than the slot's own), or the
    runtime served less than the saved prefix the gateway restored into a slot
    just before (``RuntimeModel.place``; ``Reach.restored``)
``restarted``
    the slot or RAM entry expected to hold the prefix was filled before the
    runtime's last restart (``RuntimeModel.restarted``: the gateway calls it
    when it knows, e.g. the bundled runtime's manager restarted the server);
    a saved prefix restored since makes its head current again
``evicted``
    the model says the slot the prompt landed in still held the prefix, but
    the runtime served less: it dropped it (another slot layout, a smaller
    context, an eviction the model does not see)
``unknown``
    the runtime served less than expected and none of the above applies
    (e.g. an exact RAM restore that was not made)

When the runtime lost nothing but ``oracle - expected`` is more than noise,
the cause is ``capacity``: the oracle had the prefix but a runtime of this
capacity could not hold it (give it more slots or RAM cache). Otherwise the
cause is ``none``. The tokens ``capacity`` accounts for are always
``oracle - expected`` (counted for every request where that is more than
noise, also when the runtime lost tokens as well), those of the other causes
``lost_by_runtime``: together they make up ``oracle - actual``.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass

from prefixgate.core.misses import is_miss
from prefixgate.core.prompt import PromptView

#: Causes of tokens lost between the oracle and what the upstream served.
LOSS_CAUSES = ("none", "evicted", "partial_restore_refused", "restarted", "capacity", "unknown")
# Each the way a person would act on it (``report``, the dashboard).
LOSS_WORDS = {
    "none": "nothing lost",
    "evicted": "the runtime dropped a prefix its slot should still have held: check its "
    "slot count and context size against the upstream's cache_slots",
    "partial_restore_refused": "the runtime's RAM cache held a longer prefix but would restore "
    "only a prompt the new one extends exactly (llama-server on sliding-window models)",
    "restarted": "the runtime restarted since the prefix was last sent and lost its cache",
    "capacity": "an earlier prompt shared more, but a runtime of this capacity could not "
    "hold it: give it more slots or RAM cache (cache_slots, cache_tokens)",
    "unknown": "the runtime served less than its modelled cache held, for no known reason",
}

#: Where the expected prefix was held in the runtime model.
SOURCES = ("none", "slot", "ram_exact", "ram_partial")

#: Prefixes the oracle keeps per upstream replica (about 0.2 KB each in CPython).
DEFAULT_ORACLE_NODES = 200_000

#: KV cache bytes per token of the bundled model, Gemma 3 270M: 18 layers x 1 KV
#: head x 256 dimensions x 2 (K and V) x 2 bytes (f16); with ``--swa-full`` every
#: layer keeps the whole context. An estimate: a cached prompt also carries
#: llama-server's bookkeeping.
BUNDLED_KV_BYTES_PER_TOKEN = 18 * 1 * 256 * 2 * 2
#: llama-server's ``--cache-ram`` when none is given, in MiB.
LLAMA_SERVER_CACHE_RAM_MIB = 8192
#: ``--cache-ram -1`` (no limit), in tokens.
UNLIMITED_TOKENS = 1 << 40

Chain = tuple[int, ...]


def ram_cache_tokens(mib: int | None, bytes_per_token: int = BUNDLED_KV_BYTES_PER_TOKEN) -> int:
    """The tokens a ``--cache-ram`` of ``mib`` MiB holds (``None``: llama-server's
    default; -1: no limit; 0: no RAM cache)."""
    if mib is None:
        mib = LLAMA_SERVER_CACHE_RAM_MIB
    if mib < 0:
        return UNLIMITED_TOKENS
    return mib * 1024 * 1024 // bytes_per_token


def prompt_chain(view: PromptView) -> Chain:
    """One hash per piece of ``view``: the prefix up to and including it."""
    h = hash(("prefixgate-chain", view.model))
    out: list[int] = []
    append = out.append
    for p in view.pieces:
        h = hash((h, p.name, p.digest))
        append(h)
    return tuple(out)


def common_prefix(chain: Chain, held: Container[int]) -> int:
    """Leading pieces of ``chain`` in ``held``, a prefix-closed set of chain hashes."""
    if not chain or chain[0] not in held:
        return 0
    # the first index whose hash is not held (held is prefix-closed: monotone)
    return bisect.bisect_left(range(len(chain)), True, key=lambda i: chain[i] not in held)


# -- the oracle -----------------------------------------------------------------


class PrefixOracle:
    """Every prefix of the prompts remembered, least recently used forgotten first."""

    def __init__(self, max_nodes: int = DEFAULT_ORACLE_NODES) -> None:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
        self.max_nodes = max_nodes
        self._nodes: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._nodes)

    def longest(self, chain: Chain) -> int:
        """Pieces ``chain`` shares with the longest remembered prefix."""
        return common_prefix(chain, self._nodes)

    def remember(self, chain: Chain) -> None:
        nodes, move = self._nodes, self._nodes.move_to_end
        for h in reversed(chain):  # last first: a prefix stays as recent as its extensions
            if h in nodes:
                move(h)
            else:
                nodes[h] = None
        while len(nodes) > self.max_nodes:
            nodes.popitem(last=False)  # a longest prefix: the set stays prefix-closed


# -- the runtime model ------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """What a runtime can hold: ``slots`` slots and a RAM prompt cache of ``tokens``."""

    slots: int = 4
    tokens: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        if self.tokens < 0:
            raise ValueError(f"tokens must be 0 or more, got {self.tokens}")


@dataclass
class _Held:
    """One prompt the model holds, in a slot or in the RAM cache."""

    chain: Chain
    members: frozenset[int]
    tokens: int
    epoch: int
    used: int = 0
    # leading pieces loaded from a saved prefix since the last request here: current
    # even when the rest predates a restart
    restored: int = 0


@dataclass(frozen=True)
class Landing:
    """Where a prompt lands in the runtime model and what it should reuse there."""

    slot: int
    slot_common: int  # pieces shared with the slot's prompt
    ram_common: int  # pieces shared with the best RAM-cached prompt
    ram_exact: int  # pieces of the longest RAM-cached prompt the new one extends exactly
    ram_key: int | None  # that best RAM entry (its last chain hash)
    stale: bool  # the holder of the expected prefix predates the last restart
    restored: int = 0  # pieces of the expected prefix restored from a saved prefix

    @property
    def pieces(self) -> int:
        return max(self.slot_common, self.ram_common)

    @property
    def source(self) -> str:
        if self.pieces == 0:
            return "none"
        if self.slot_common >= self.ram_common:
            return "slot"
        return "ram_exact" if self.ram_exact >= self.ram_common else "ram_partial"


class RuntimeModel:
    """Slots and a RAM prompt cache, as llama-server keeps them (see the module docstring)."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self.epoch = 0
        self._slots: list[_Held | None] = [None] * capacity.slots
        self._ram: OrderedDict[int, _Held] = OrderedDict()  # by last chain hash, LRU first
        self._ram_tokens = 0
        # chain hash -> the RAM entries holding it (by key, the latest cached last)
        self._index: dict[int, dict[int, None]] = {}
        self._clock = 0

    def restarted(self) -> None:
        """The runtime restarted: whatever the model holds now, it really lost."""
        self.epoch += 1

    def land(self, chain: Chain) -> Landing:
        """Where ``chain`` lands and what it should reuse (changes nothing)."""
        best, best_common = -1, 0
        for i, held in enumerate(self._slots):
            if held is not None:
                common = common_prefix(chain, held.members)
                if common > best_common:
                    best, best_common = i, common
        if best < 0:  # no slot shares anything: the least recently used (empty first)
            best = min(range(len(self._slots)), key=self._last_used)
        ram_common = common_prefix(chain, self._index)
        ram_exact, key = 0, None
        for i in range(ram_common - 1, -1, -1):
            if chain[i] in self._ram:
                ram_exact = i + 1
                break
        if ram_common > best_common:  # an entry holding the longest shared prefix
            key = (
                chain[ram_exact - 1]
                if ram_exact == ram_common
                else next(reversed(self._index[chain[ram_common - 1]]))
            )
        holder = self._ram.get(key) if key is not None else self._slots[best]
        pieces = max(best_common, ram_common)
        restored = min(pieces, holder.restored) if holder is not None else 0
        stale = holder is not None and holder.epoch < self.epoch and pieces > restored
        return Landing(best, best_common, ram_common, ram_exact, key, stale, restored)

    def remember(self, chain: Chain, tokens: int) -> Landing:
        """The runtime processed ``chain`` (``tokens`` long): it now sits in a slot."""
        landing = self.land(chain)
        self._clock += 1
        if landing.ram_key is not None:  # restored: the entry leaves the RAM cache
            self._drop(landing.ram_key)
        old = self._slots[landing.slot]
        if old is not None and landing.slot_common < len(old.chain):
            self._cache(old)  # the new prompt does not extend it: to the RAM cache
        self._slots[landing.slot] = _Held(
            chain, frozenset(chain), tokens, self.epoch, used=self._clock
        )
        return landing

    def place(self, chain: Chain, tokens: int, *, restored: bool = False) -> Landing:
        """A slot action loaded ``chain`` (``tokens`` long) into the slot it lands in:
        a saved prefix restored (``restored``), or a priming request sent to that
        slot. The slot's previous prompt is dropped, not cached: llama-server
        neither keeps a slot it restores into nor searches the RAM cache for a
        request pinned to a slot.

        A restore into a slot whose prompt predates the last restart and extends
        the restored prefix keeps that prompt, its shared head now current: what
        the restart lost beyond the saved prefix stays ``restarted``."""
        landing = self.land(chain)
        self._clock += 1
        held = self._slots[landing.slot]
        if (
            restored
            and held is not None
            and held.epoch < self.epoch
            and 0 < landing.slot_common < len(held.chain)
        ):
            held.restored, held.used = landing.slot_common, self._clock
            return landing
        self._slots[landing.slot] = _Held(
            chain,
            frozenset(chain),
            tokens,
            self.epoch,
            used=self._clock,
            restored=len(chain) if restored else 0,
        )
        return landing

    @property
    def held_prompts(self) -> int:
        return sum(1 for s in self._slots if s is not None) + len(self._ram)

    def _last_used(self, slot: int) -> int:
        held = self._slots[slot]
        return -1 if held is None else held.used

    def _cache(self, held: _Held) -> None:
        limit = self.capacity.tokens
        held.restored = 0  # restored for the request after the restore, which is past
        if not held.chain or held.tokens > limit:
            return
        key = held.chain[-1]
        if key in self._ram:
            self._drop(key)
        while self._ram and self._ram_tokens + held.tokens > limit:
            self._drop(next(iter(self._ram)))
        self._ram[key] = held
        self._ram_tokens += held.tokens
        index = self._index
        for h in held.chain:
            found = index.get(h)
            if found is None:
                index[h] = {key: None}
            else:
                found[key] = None

    def _drop(self, key: int) -> None:
        held = self._ram.pop(key, None)
        if held is None:
            return
        self._ram_tokens -= held.tokens
        index = self._index
        for h in held.chain:
            found = index[h]
            if len(found) == 1:
                del index[h]
            else:
                del found[key]


# -- per upstream replica, and the verdict ----------------------------------------------


@dataclass(frozen=True)
class Reach:
    """Where one request stands when it arrives, in pieces."""

    oracle: int
    expected: int
    source: str  # one of SOURCES
    stale: bool  # the expected prefix predates the runtime's last restart
    exact: int = 0  # expected, were only exact extensions restored from the RAM cache
    restored: int = 0  # pieces of expected restored from a saved prefix for this request


class ReachTracker:
    """An oracle and a runtime model per upstream replica (``target``)."""

    def __init__(self, max_nodes: int = DEFAULT_ORACLE_NODES) -> None:
        self.max_nodes = max_nodes
        self._oracles: dict[str, PrefixOracle] = {}
        self._models: dict[str, RuntimeModel] = {}

    def reach(self, target: str, chain: Chain, capacity: Capacity, *, floor: int = 0) -> Reach:
        """Oracle and expected for ``chain`` on ``target`` (changes nothing).

        ``floor``: pieces known to be shared with an earlier prompt on ``target``
        (the session's previous request): the oracle is never less.
        """
        oracle = self._oracle(target).longest(chain)
        landing = self._model(target, capacity).land(chain)
        expected = landing.pieces
        return Reach(
            oracle=max(oracle, expected, floor),
            expected=expected,
            source=landing.source,
            stale=landing.stale,
            exact=max(landing.slot_common, landing.ram_exact),
            restored=landing.restored,
        )

    def remember(self, target: str, chain: Chain, tokens: int, capacity: Capacity) -> None:
        """``target`` processed ``chain`` (about ``tokens`` long)."""
        self._oracle(target).remember(chain)
        self._model(target, capacity).remember(chain, tokens)

    def place(
        self, target: str, chain: Chain, tokens: int, capacity: Capacity, *, restored: bool
    ) -> None:
        """A slot action on ``target`` loaded ``chain`` into a slot (``RuntimeModel.place``)."""
        self._oracle(target).remember(chain)
        self._model(target, capacity).place(chain, tokens, restored=restored)

    def restarted(self, target: str) -> None:
        """``target``'s runtime restarted (what its model holds is lost there)."""
        model = self._models.get(target)
        if model is not None:
            model.restarted()

    def held_prompts(self, target: str) -> int:
        """Prompts the runtime model of ``target`` holds (slots and RAM cache)."""
        found = self._models.get(target)
        return found.held_prompts if found is not None else 0

    def nodes(self, target: str) -> int:
        found = self._oracles.get(target)
        return len(found) if found is not None else 0

    def _oracle(self, target: str) -> PrefixOracle:
        found = self._oracles.get(target)
        if found is None:
            found = self._oracles[target] = PrefixOracle(self.max_nodes)
        return found

    def _model(self, target: str, capacity: Capacity) -> RuntimeModel:
        found = self._models.get(target)
        if found is None or found.capacity != capacity:
            found = self._models[target] = RuntimeModel(capacity)
        return found


@dataclass(frozen=True)
class Loss:
    lost_by_runtime: int
    cause: str  # one of LOSS_CAUSES
    capacity_tokens: int  # oracle - expected when more than noise, else 0


def capacity_gap(oracle: int | None, expected: int | None) -> int:
    """``oracle - expected`` in tokens when that is more than noise, else 0."""
    if oracle is None or expected is None or not is_miss(oracle, expected):
        return 0
    return oracle - expected


def judge_loss(
    reach: Reach, oracle: int, expected: int, actual: int | None, restored: int | None = None
) -> Loss | None:
    """The loss for one request, its three numbers in tokens (``None``: actual unknown).

    ``restored``: the tokens of ``reach.restored`` pieces, a saved prefix restored
    for this request; served less than that, the restore was refused."""
    if actual is None:
        return None
    capacity = capacity_gap(oracle, expected)
    if is_miss(expected, actual):
        if reach.restored and restored is not None and is_miss(restored, actual):
            cause = "partial_restore_refused"
        elif reach.stale:
            cause = "restarted"
        elif reach.source == "ram_partial":
            cause = "partial_restore_refused"
        elif reach.source == "slot":
            cause = "evicted"
        else:
            cause = "unknown"
        return Loss(expected - actual, cause, capacity)
    return Loss(0, "capacity" if capacity else "none", capacity)
