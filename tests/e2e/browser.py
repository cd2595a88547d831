"""Headless Chromium for end-to-end tests, and a reader for the dashboard's DOM.

No Python browser driver: the ``chromium`` binary (Debian package ``chromium``)
is run once per page, either to print the DOM after load (``--dump-dom``) or to
write a PNG (``--screenshot``). ``PREFIXGATE_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_ENV = "PREFIXGATE_CHROMIUM"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$PREFIXGATE_CHROMIUM``, else the first Chromium on ``PATH``."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return shutil.which(configured)
    return next((found for name in _NAMES if (found := shutil.which(name))), None)


def _run(binary: str, args: list[str], timeout: float) -> str:
    """Run headless Chromium with a throwaway profile; return its stdout.

    Chromium starts helper processes, so it runs in a session of its own and
    the whole group is killed if it overruns ``timeout``.
    """
    with tempfile.TemporaryDirectory(prefix="prefixgate-chromium-") as profile:
        command = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"chromium did not finish in {timeout:.0f} s: {command}") from None
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {err[-2000:]}")
    return out


def dump_dom(binary: str, url: str, *, timeout: float = 120.0) -> str:
    """The page's DOM, serialised after load."""
    dom = _run(binary, ["--dump-dom", url], timeout)
    assert "<html" in dom, f"chromium printed no document for {url}"
    return dom


def screenshot(
    binary: str,
    url: str,
    path: Path,
    *,
    size: tuple[int, int] = (1280, 2000),
    timeout: float = 120.0,
) -> Path:
    """A PNG of the page's first ``size`` pixels, written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _run(binary, [f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", url], timeout)
    assert path.is_file(), f"chromium wrote no screenshot to {path}"
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# -- reading the dashboard ----------------------------------------------------


@dataclass
class Dashboard:
    """What a person sees on the dashboard, read from its machine hooks."""

    totals: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (value, text)
    requests: list[dict[str, str]] = field(default_factory=list)  # data-col: text
    causes: dict[str, int] = field(default_factory=dict)
    series: list[str] = field(default_factory=list)
    chart_points: int = 0


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Dashboard()
        self._total: tuple[str, str] | None = None
        self._col: str | None = None
        self._table: str | None = None
        self._tbody = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tbody":
            self._tbody = True
        elif tag == "tr" and self._table == "requests" and self._tbody:
            self.page.requests.append({})
        elif tag == "tr" and "data-count" in a and "data-cause" in a:  # the causes table
            self.page.causes[a["data-cause"]] = int(a["data-count"])
        elif tag == "svg" and a.get("id") == "share-chart":
            self.page.chart_points = int(a["data-points"])
        elif tag == "g" and "data-series" in a:
            self.page.series.append(a["data-series"])
        if "data-total" in a:
            self._total, self._text = (a["data-total"], a.get("data-value", "")), []
        elif tag == "td" and self._table == "requests" and "data-col" in a:
            self._col, self._text = a["data-col"], []

    def handle_data(self, data: str) -> None:
        if self._total is not None or self._col is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "dd" and self._total is not None:
            name, value = self._total
            self.page.totals[name] = (value, "".join(self._text).strip())
            self._total = None
        elif tag == "td" and self._col is not None:
            self.page.requests[-1][self._col] = "".join(self._text).strip()
            self._col = None
        elif tag == "tbody":
            self._tbody = False
        elif tag == "table":
            self._table = None


def read_dashboard(html: str) -> Dashboard:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page
