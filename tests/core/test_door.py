from __future__ import annotations

import pytest

from prefixgate.core.door import host_allowed, host_name, origin_allowed


@pytest.mark.parametrize(
    ("host", "name"),
    [("LocalHost:8787", "localhost"), ("[::1]:8787", "::1"), ("::1", "::1"), ("a.b", "a.b")],
)
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    "host",
    [None, "127.0.0.1:8787", "localhost", "localhost:1", "x.localhost", "[::1]:8787",
     "10.1.2.3:8787", "gw.internal:8787"],
)  # fmt: skip
def test_loopback_names_ip_literals_the_listen_host_and_allowed_names_pass(
    host: str | None,
) -> None:
    assert host_allowed(host, "gw.internal", ())


@pytest.mark.parametrize(
    "host", ["evil.example:8787", "localhost.evil.example", "", "127.0.0.1.nip.io"]
)
def test_any_other_name_is_refused_unless_allowed(host: str) -> None:
    assert not host_allowed(host, "127.0.0.1", ())
    assert host_allowed(host, "127.0.0.1", ("*",))
    if host:
        assert host_allowed(host, "127.0.0.1", (host_name(host).upper(),))


def test_origins() -> None:
    assert origin_allowed(None, "127.0.0.1:8787", ())  # not a browser
    assert origin_allowed("http://127.0.0.1:8787", "127.0.0.1:8787", ())  # its own pages
    assert not origin_allowed("https://evil.example", "127.0.0.1:8787", ())
    assert not origin_allowed("null", "127.0.0.1:8787", ())
    assert not origin_allowed("http://127.0.0.1:8787", None, ())
    assert origin_allowed("https://tool.example/", "127.0.0.1:8787", ("https://tool.example",))
    assert origin_allowed("https://evil.example", "127.0.0.1:8787", ("*",))
