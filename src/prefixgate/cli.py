"""Command line: serve, claude, keygen, rewrite, key, report, diagnose, demo, doctor.

Each command is a thin layer: it reads its input, calls the pure core or the
app, and prints. Contracts other tools rely on:

* ``rewrite [--policy P] [--explain] [FILE|-]`` prints the body that would be
  forwarded, as JSON on stdout; ``--explain`` writes what was found to stderr.
* ``key [FILE|-]`` prints ``{"key", "segments", "attribution", "pieces"}`` as one
  JSON object; ``pieces`` names every prompt piece in render order with its digest.
* ``diagnose CAPTURE --json`` prints one JSON object per request with at least
  ``index``, ``session``, ``agent``, ``key``, ``changed_segment``, ``cause``.
* ``report --json`` prints the report's numbers as one JSON object.

FILE holds a request body or one capture record (``method``, ``path``,
``headers``, ``body`` as a JSON string).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from prefixgate import __version__
from prefixgate.config import ConfigError, Settings, load_settings
from prefixgate.config.presets import PRESETS
from prefixgate.core.auth import hash_key, new_key
from prefixgate.core.errors import PrefixgateError
from prefixgate.core.pipeline import Rewrite, RewriteOptions, rewrite
from prefixgate.core.policy import Policy
from prefixgate.core.prompt import KEY_SECTIONS
from prefixgate.core.routing import ROUTING_POLICIES
from prefixgate.core.toolload import ToolLoads
from prefixgate.upstreams.registry import KINDS

POLICIES = [p.value for p in Policy]
LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]


def read_request(source: str) -> bytes:
    """The request body in ``source`` (a path or ``-``), unwrapping a capture record."""
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    try:
        value = json.loads(raw)
    except ValueError:
        return raw  # let the pipeline report the JSON error
    if isinstance(value, dict) and isinstance(value.get("body"), str) and "messages" not in value:
        return str(value["body"]).encode("utf-8")
    return raw


def _policy(value: str | None) -> Policy | None:
    return None if value is None else Policy.parse(value)


def _run_rewrite(source: str, policy: Policy, tool_loads: ToolLoads = ToolLoads.INLINE) -> Rewrite:
    options = RewriteOptions(policy=policy, provider="anthropic:default", tool_loads=tool_loads)
    try:
        return rewrite(read_request(source), options)
    except PrefixgateError as exc:
        raise click.ClickException(f"{exc.error_type}: {exc.message}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {source}: {exc.strerror}") from None


F = TypeVar("F", bound=Callable[..., Any])


def _tool_loads_option(help_text: str) -> Callable[[F], F]:
    """``--tool-loads``, shared by the commands that run the rewrite pipeline."""
    return click.option(
        "--tool-loads",
        type=click.Choice([m.value for m in ToolLoads]),
        default=ToolLoads.INLINE.value,
        show_default=True,
        help=help_text,
    )


@click.group()
@click.version_option(__version__, prog_name="prefixgate")
def main() -> None:
    """prefixgate: a cache-stable gateway for Claude Code and other Anthropic-API agents."""


@main.command("rewrite")
@click.option("--policy", type=click.Choice(POLICIES), default="strip", show_default=True)
@_tool_loads_option("Where tools loaded through ToolSearch go (docs/upstreams.md).")
@click.option("--explain", is_flag=True, help="Describe what was found and changed on stderr.")
@click.argument("source", default="-")
def rewrite_cmd(policy: str, tool_loads: str, explain: bool, source: str) -> None:
    """Print the body prefixgate would forward for the request in SOURCE."""
    result = _run_rewrite(source, Policy.parse(policy), ToolLoads.parse(tool_loads))
    sys.stdout.buffer.write(result.body)
    sys.stdout.buffer.write(b"\n")
    if explain:
        click.echo(_explain(result), err=True)
        if result.tool_loads is not None:
            click.echo(result.tool_loads.describe(), err=True)


def _explain(result: Rewrite) -> str:
    found = result.attribution
    if found is None:
        return f"policy {result.policy.value}: no attribution block found; nothing removed"
    fields = ", ".join(f"{k}={v}" for k, v in found.fields.items())
    action = "left unchanged" if result.policy is Policy.PASSTHROUGH else "changed"
    lines = [
        f"attribution block found: {found.form} form, {found.location} "
        f"({'whole first block' if found.whole_block else 'head of the text'}"
        f"{', glued to the next text' if found.glued else ''})",
        f"  fields: {fields}",
        f"  text: {found.header!r}",
        f"policy {result.policy.value}: body {action}",
        f"prefix key: {result.key.hex}",
    ]
    return "\n".join(lines)


@main.command("key")
@click.option("--policy", type=click.Choice(POLICIES), default="strip", show_default=True)
@click.argument("source", default="-")
def key_cmd(policy: str, source: str) -> None:
    """Print the stable prefix cache key, its inputs and every prompt piece of SOURCE.

    ``pieces`` lists the prompt in render order (name, section, digest, and
    whether the piece enters the key)."""
    result = _run_rewrite(source, Policy.parse(policy))
    out: dict[str, Any] = {
        "key": result.key.hex,
        "segments": result.segments.summary(),
        "attribution": dict(result.attribution.fields) if result.attribution else None,
        "pieces": [
            {
                "name": p.name,
                "section": p.section,
                "digest": p.digest,
                "in_key": p.head and p.section in KEY_SECTIONS,
            }
            for p in result.view.pieces
        ],
    }
    click.echo(json.dumps(out, ensure_ascii=False))


@main.command("keygen")
@click.option("--tenant", default="team", show_default=True, help="The tenant it is for.")
def keygen_cmd(tenant: str) -> None:
    """Print a new gateway API key and the config lines holding its digest.

    Give the key to the tenant (it is shown once); only its digest goes into
    the config file.
    """
    key = new_key()
    click.echo(f"key:    {key}")
    click.echo(f"config: [tenants.{tenant}]\n        keys = [{json.dumps(hash_key(key))}]")


@main.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--upstream",
    multiple=True,
    help="Base URL of the upstream to forward to; repeat it for replicas of one upstream.",
)
@click.option(
    "--routing",
    type=click.Choice(ROUTING_POLICIES),
    default=None,
    help="How requests are spread over several --upstream replicas "
    "(default prefix_affinity: consistent hashing of the stable prefix key, bounded load).",
)
@click.option(
    "--state",
    default=None,
    help="Redis URL (redis://host:port/db) for session pins shared by several gateways.",
)
@click.option(
    "--upstream-kind",
    type=click.Choice(tuple(KINDS)),
    default=None,
    help="What --upstream (or the bundled runtime) speaks: anthropic (/v1/messages, "
    "the default) or openai (/v1/chat/completions, translated both ways).",
)
@click.option(
    "--preset",
    type=click.Choice(tuple(PRESETS)),
    default=None,
    help="Start from a runtime's or service's defaults (kind, URL, tokenizer, policy); "
    "--upstream, --upstream-kind, --policy and the config file still override them "
    "(docs/runtimes/).",
)
@click.option("--policy", type=click.Choice(POLICIES), default=None)
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    default=None,
    help="Listen beyond loopback without tenant keys (anyone who can reach it may use it).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="A host name clients may use to reach a keyless gateway besides loopback names "
    "and IP addresses (repeatable; server.allowed_hosts; docs/operations.md).",
)
@click.option("--port", type=int, default=None, help="Port to listen on (default 8787).")
@click.option(
    "--audit",
    "audit_path",
    default=None,
    help="Audit log: a SQLite file (default ~/.local/state/prefixgate/audit.db), "
    "a .jsonl file, or 'memory'.",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append every incoming request to this file (corpus format, credentials removed).",
)
@click.option(
    "--saved-prefix-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="The bundled runtime's saved prefixes (KV state of system prompt and tools, "
    "restored after a restart) take at most this many bytes on disk "
    "(default 4 GiB; 0 turns them off; server.saved_prefix_bytes).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
def serve_cmd(
    config_path: str | None,
    upstream: tuple[str, ...],
    routing: str | None,
    state: str | None,
    upstream_kind: str | None,
    preset: str | None,
    policy: str | None,
    host: str | None,
    allow_unauthenticated: bool | None,
    allowed_hosts: tuple[str, ...],
    port: int | None,
    audit_path: str | None,
    record: str | None,
    saved_prefix_bytes: int | None,
    log_level: str,
) -> None:
    """Run the gateway (with the bundled local runtime when no upstream is set)."""
    flags = {
        "upstream": list(upstream) or None,
        "routing": routing,
        "state": state,
        "upstream_kind": upstream_kind,
        "preset": preset,
        "policy": policy,
        "host": host,
        "allow_unauthenticated": allow_unauthenticated,
        "allowed_hosts": list(allowed_hosts) or None,
        "port": port,
        "audit_path": audit_path,
        "record": record,
        "saved_prefix_bytes": saved_prefix_bytes,
    }
    try:
        settings = load_settings(config_path, flags=flags)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from prefixgate.server import run

    run(settings, log_level=log_level)


@main.command("report")
@click.option(
    "--db",
    "db_path",
    default=None,
    help="Audit log to read: a SQLite file or a .jsonl file (default: the one serve writes).",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--since", default=None, help="Only requests since: 2h, 30m, 7d, or an ISO date.")
@click.option("--session", default=None, help="Only this session (full id).")
@click.option("--tenant", default=None, help="Only this tenant (default: the configured one).")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def report_cmd(
    db_path: str | None,
    config_path: str | None,
    since: str | None,
    session: str | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    """Hit share vs expected per session, tokens and time saved, top miss causes;
    money saved where the config (--config) gives an upstream's prices."""
    from rich.console import Console

    from prefixgate.report import build_report, prices_of, render_report, report_json
    from prefixgate.store.sinks import AuditLogError, read_audit

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    path = db_path or settings.audit_path
    if not path:
        raise click.ClickException("no audit log: pass --db PATH (a .db or .jsonl file)")
    try:
        start = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    try:
        records = read_audit(path, since=start, session=session, tenant=tenant or settings.tenant)
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from None
    report = build_report(records, prices_of(settings.upstreams))
    if as_json:
        click.echo(json.dumps(report_json(report), ensure_ascii=False))
        return
    Console().print(render_report(report))


def parse_since(value: str, now: float) -> float:
    """``2h``, ``30m``, ``45s``, ``7d`` ago, or an ISO 8601 date/time (UTC if naive)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = value[:-1], value[-1:].lower()
    if unit in units and number.replace(".", "", 1).isdigit():
        return now - float(number) * units[unit]
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a duration (2h, 30m, 7d) nor an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@main.command("diagnose")
@click.option("--policy", type=click.Choice(POLICIES), default="strip", show_default=True)
@_tool_loads_option("The upstream's tool-load policy; as_sent names every ToolSearch load.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request.")
@click.argument("capture", type=click.Path(exists=True, dir_okay=False))
def diagnose_cmd(policy: str, tool_loads: str, as_json: bool, capture: str) -> None:
    """Say, offline, which prompt piece changed before each request of a CAPTURE file, and why."""
    from rich.console import Console

    from prefixgate.diagnose import diagnose, render_diagnosis
    from prefixgate.replay import load_capture

    try:
        records = load_capture(capture)
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{capture} is not a capture file: {exc}") from None
    results = diagnose(records, Policy.parse(policy), tool_loads=ToolLoads.parse(tool_loads))
    if as_json:
        for result in results:
            click.echo(result.to_json())
        return
    console = Console()
    if not console.is_terminal:  # a pipe or a file: room for every column
        console = Console(width=max(console.width, 160))
    console.print(render_diagnosis(results, Policy.parse(policy)))


@main.command("demo")
@click.option("--all", "all_requests", is_flag=True, help="Replay the whole corpus file.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None)
def demo_cmd(all_requests: bool, corpus: str | None) -> None:
    """Replay recorded Claude Code requests straight to the local runtime and through prefixgate."""
    from rich.console import Console

    from prefixgate.demo import run_demo

    code = run_demo(
        all_requests=all_requests, corpus=Path(corpus) if corpus else None, console=Console()
    )
    sys.exit(code)


@main.command("doctor")
@click.argument("url", required=False)
@click.option("--kind", type=click.Choice(tuple(KINDS)), default=None, help="Default: detected.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--model", default=None, help="Model name for the probes (default: the listed one).")
def doctor_cmd(
    url: str | None, kind: str | None, config_path: str | None, model: str | None
) -> None:
    """Probe a runtime (default: what serve would use) and say what its cache will do."""
    from rich.console import Console

    from prefixgate.doctor import Unreachable, run_doctor

    try:
        code = run_doctor(url, kind, config_path=config_path, model=model, console=Console())
    except Unreachable as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command(
    "claude",
    context_settings={
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
        "help_option_names": [],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def claude_cmd(args: tuple[str, ...]) -> None:
    """Run Claude Code through the gateway, starting it (and the bundled runtime) if
    none listens on the configured port; ARGS go to claude untouched (so does --help).
    Configure with PREFIXGATE_CONFIG and PREFIXGATE_* variables, as serve."""
    from prefixgate.launcher import LaunchError, launch

    try:
        code = launch(args, err=sys.stderr)
    except (LaunchError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


__all__ = ["Settings", "configure_logging", "main", "read_request"]
