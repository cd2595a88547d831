"""Coverage-guided fuzzing of the rewrite pipeline (atheris / libFuzzer).

Each input is one option byte followed by a request body. The option byte picks
the policy (low two bits), whether ``max_tokens`` is required (bit 2) and
whether ``preserve_as_metadata`` sends its header (bit 3). The body goes through
``parse_request`` and ``rewrite_parsed``, the proxy's own path. A
``PrefixgateError`` is a clean rejection; any other exception, or a rewritten
body that is not a JSON object with a model and messages, crashes the fuzzer.

    python fuzz/fuzz_pipeline.py --write-seeds DIR [--corpus DIR] [--max-seed-bytes N]
    python fuzz/fuzz_pipeline.py [libFuzzer flags] DIR...

See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_ENV = "PREFIXGATE_CORPUS_DIR"
LINE = "x-anthropic-billing-header: cc_version=2.1.197.3ab; cc_entrypoint=cli;"


def default_corpus() -> Path:
    """The recorded requests: ``$PREFIXGATE_CORPUS_DIR``, else ``<repo>/corpus``."""
    configured = os.environ.get(CORPUS_ENV)
    return Path(configured) if configured else REPO_ROOT / "corpus"


# ---------------------------------------------------------------------- seeds


def _small_bodies() -> list[dict[str, Any]]:
    identity = "You are Claude Code, Anthropic's official CLI for Claude."
    base: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return [
        base,
        {**base, "system": LINE + "\n" + identity},
        {**base, "system": LINE + identity, "stream": True},
        {
            **base,
            "system": [
                {"type": "text", "text": LINE},
                {"type": "text", "text": identity, "cache_control": {"type": "ephemeral"}},
            ],
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        },
        {
            **base,
            "system": [
                {"type": "text", "text": 'x-anthropic-billing-header: {"cc_is_subagent":true}'}
            ],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]},
            ],
        },
    ]


def write_seeds(out: Path, corpus: Path, max_bytes: int | None) -> int:
    """Write seed inputs (option byte + body) to ``out``; return how many.

    One seed per recorded request (the corpus files are read, never changed),
    each with its own option byte so every policy starts from real bodies,
    plus a few small hand-made requests. With ``max_bytes``, bodies longer
    than that are left out.
    """
    records = sorted(corpus.glob("*.jsonl"))
    if not records:
        raise SystemExit(f"no recorded requests (*.jsonl) in {corpus} (set {CORPUS_ENV})")
    raws: list[bytes] = []
    for path in records:
        with path.open("rb") as fh:
            raws.extend(json.loads(line)["body"].encode("utf-8") for line in fh if line.strip())
    raws.extend(json.dumps(body).encode() for body in _small_bodies())
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, raw in enumerate(raws):
        if max_bytes is not None and len(raw) > max_bytes:
            continue
        (out / f"seed-{i:04d}").write_bytes(bytes([i % 16]) + raw)
        written += 1
    return written


def seeds_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="write fuzzing seeds from recorded requests")
    parser.add_argument("--write-seeds", type=Path, required=True, metavar="DIR")
    parser.add_argument("--corpus", type=Path, default=None, metavar="DIR")
    parser.add_argument("--max-seed-bytes", type=int, default=None, metavar="N")
    args = parser.parse_args(argv)
    count = write_seeds(args.write_seeds, args.corpus or default_corpus(), args.max_seed_bytes)
    print(f"wrote {count} seeds to {args.write_seeds}")


# ---------------------------------------------------------------------- fuzzing


def fuzz_main(argv: list[str]) -> None:
    try:
        import atheris
    except ImportError:
        raise SystemExit(
            "atheris is not installed: install the dev extra (pip install -e '.[dev]')"
        ) from None

    with atheris.instrument_imports(include=["prefixgate"]):
        from prefixgate.core.errors import PrefixgateError
        from prefixgate.core.pipeline import RewriteOptions, parse_request, rewrite_parsed
        from prefixgate.core.policy import METADATA_HEADER, Policy

    policies = list(Policy)

    def options_for(flags: int) -> RewriteOptions:
        return RewriteOptions(
            policy=policies[flags & 3],
            require_max_tokens=not flags & 4,
            metadata_header=METADATA_HEADER if flags & 8 else None,
        )

    def test_one_input(data: bytes) -> None:
        if not data:
            return
        options = options_for(data[0])
        raw = data[1:]
        try:
            body = parse_request(raw, require_max_tokens=options.require_max_tokens)
            result = rewrite_parsed(raw, body, options)
        except PrefixgateError:
            return
        out = json.loads(result.body)
        if not isinstance(out, dict) or not isinstance(out.get("model"), str):
            raise AssertionError(f"rewritten body has no model: {result.body[:200]!r}")
        if not isinstance(out.get("messages"), list):
            raise AssertionError(f"rewritten body has no messages: {result.body[:200]!r}")
        if not result.changed and result.body != raw:
            raise AssertionError("an unchanged request was not forwarded byte for byte")

    # libFuzzer's closing lines then include stat::number_of_executed_units: N
    if not any(arg.startswith("-print_final_stats") for arg in argv):
        argv = [*argv, "-print_final_stats=1"]
    atheris.Setup([sys.argv[0], *argv], test_one_input)
    atheris.Fuzz()


def main() -> None:
    argv = sys.argv[1:]
    if any(arg.startswith("--write-seeds") for arg in argv):
        seeds_main(argv)
    else:
        fuzz_main(argv)


if __name__ == "__main__":
    main()
