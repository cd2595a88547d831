"""An observer stand-in for the exchange's tests: what it is told, in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefixgate.store.audit import AuditRecord


class Told:
    """Stands for ``CacheObserver``: notes ``finish`` and the work it leaves for
    ``Exchange.settle`` (``settled``), commits at once."""

    def __init__(self, calls: list[str] | None = None) -> None:
        self.calls: list[str] = [] if calls is None else calls
        self.records: list[AuditRecord] = []

    def finish(
        self,
        rec: AuditRecord,
        seen: Any,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> Callable[[], None]:
        self.calls.append("finish")
        self.records.append(rec)
        if on_commit is not None:
            on_commit()
        return lambda: self.calls.append("settled")
