"""The wheel as a user installs it, on a machine with no repository.

The wheel is built offline from a copy of ``pyproject.toml``, ``README.md`` and
``src/`` (pip, no build isolation: the dev extra holds the setuptools it needs)
and installed into a new virtual environment outside the repository. That
environment sees the dependencies already installed in the test interpreter's
site-packages through a ``.pth`` line placed after its own, so prefixgate
itself comes from the wheel and nothing is downloaded. Its console script then
runs from a folder outside the repository: ``--version``, shell completion,
``serve --upstream`` in front of a small fake upstream, ``report`` over the
audit that ``serve`` wrote, and ``demo`` with no recorded requests around.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.servers import ServerThread, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ANSWER = "hello from the fake upstream"
TEMPLATE = "prefixgate/runtime/templates/gemma3-tools.jinja"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    source: Path  # the copy of the source tree the wheel was built from
    env: Path  # the virtual environment
    python: Path
    script: Path  # its `prefixgate` console script
    outside: Path  # a working folder outside the repository
    home: Path

    def environ(self, **extra: str) -> dict[str, str]:
        """A user's environment: no PYTHONPATH, HOME in a scratch folder."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PREFIXGATE_"))}
        env.update(HOME=str(self.home), XDG_STATE_HOME=str(self.home / ".local" / "state"))
        env.update(extra)
        return env

    def run(
        self, *args: str, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script), *args],
            cwd=self.outside,
            env=self.environ(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def pip_offline(python: str, command: str) -> list[str]:
    """pip run by ``python``: no dependencies, no index, no version check."""
    offline = ["--quiet", "--no-deps", "--no-index", "--disable-pip-version-check"]
    return [python, "-m", "pip", command, *offline]


def _build_wheel(work: Path, source: Path) -> Path:
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(
        REPO_ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    dist = work / "dist"
    done = subprocess.run(
        [
            *pip_offline(sys.executable, "wheel"),
            "--no-build-isolation",
            "-w",
            str(dist),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (
        "building the wheel failed (it needs setuptools>=77 in the test environment: "
        f"pip install -e '.[dev]'):\n{done.stdout}\n{done.stderr}"
    )
    wheels = list(dist.glob("prefixgate-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    assert not work.resolve().is_relative_to(REPO_ROOT)
    source = work / "source"
    wheel = _build_wheel(work, source)
    env = work / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # After the environment's own site-packages: the dependencies (and pip) of
    # the interpreter running the tests, never its prefixgate (an editable
    # install's own .pth files are not read from a folder added this way).
    Path(purelib, "zz-test-dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n", encoding="utf-8"
    )
    outside = work / "elsewhere"
    home = work / "home"
    outside.mkdir()
    home.mkdir()
    done = subprocess.run(
        [*pip_offline(str(python), "install"), "--ignore-installed", str(wheel)],
        cwd=outside,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"installing the wheel failed:\n{done.stdout}\n{done.stderr}"
    return Installed(wheel, source / "src", env, python, env / "bin" / "prefixgate", outside, home)


def test_the_wheel_holds_the_chat_template_and_the_console_script(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "prefixgate = prefixgate.cli:main" in wheel.read(entry_points).decode()
    assert TEMPLATE in names
    assert "prefixgate/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "corpus/"))]
    # Every module of the source tree it was built from is in the wheel (a
    # forgotten __init__.py leaves a whole subpackage out).
    sources = {
        p.relative_to(installed.source).as_posix()
        for p in (installed.source / "prefixgate").rglob("*.py")
    }
    assert sources <= names, sorted(sources - names)


def test_the_installed_package_is_the_wheel_not_the_source_tree(installed: Installed) -> None:
    code = (
        "import prefixgate, json\n"
        "from prefixgate.runtime.local import default_template_path\n"
        "print(json.dumps([prefixgate.__file__, str(default_template_path())]))\n"
    )
    done = subprocess.run(
        [str(installed.python), "-c", code],
        cwd=installed.outside,
        env=installed.environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    module, template = (Path(p) for p in json.loads(done.stdout))
    assert module.is_relative_to(installed.env), module
    assert template.is_relative_to(installed.env), template
    assert template.is_file()


def test_version_comes_from_the_package_metadata(installed: Installed) -> None:
    done = installed.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"prefixgate, version {version('prefixgate')}"
    assert f"-{version('prefixgate')}-" in installed.wheel.name


def test_bash_completion_from_the_console_script(installed: Installed) -> None:
    source = installed.run(_PREFIXGATE_COMPLETE="bash_source")
    assert source.returncode == 0, source.stderr
    assert "complete -o nosort -F _prefixgate_completion prefixgate" in source.stdout
    script = installed.outside / "prefixgate-complete.bash"
    script.write_text(source.stdout, encoding="utf-8")
    # What bash does on <TAB>: source the script, then call the function it registered.
    shell = (
        f'export PATH="{installed.script.parent}:$PATH"\n'
        f'source "{script}"\n'
        "complete_words() { COMP_WORDS=($1); COMP_CWORD=$2; COMPREPLY=();"
        ' _prefixgate_completion prefixgate; echo "${COMPREPLY[*]}"; }\n'
        'complete_words "prefixgate se" 1\n'
        'complete_words "prefixgate serve --upstream-k" 2\n'
        'complete_words "prefixgate serve --upstream-kind o" 3\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", shell],
        cwd=installed.outside,
        env=installed.environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["serve", "--upstream-kind", "openai"], done.stdout


class FakeUpstream:
    """Answers every ``/v1/messages`` with ``ANSWER``; keeps the models it was asked for."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        self.models.append(str(json.loads(await request.body()).get("model")))
        return JSONResponse(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": "fake",
                "content": [{"type": "text", "text": ANSWER}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 7, "output_tokens": 5},
            }
        )


@contextlib.contextmanager
def serving(installed: Installed, *args: str, startup_s: float = 60, **extra: str) -> Iterator[str]:
    """``prefixgate serve ARGS`` from the installed script; yields its URL."""
    port = free_port()
    log = installed.outside / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(installed.script), "serve", *args, "--port", str(port)],
            cwd=installed.outside,
            env=installed.environ(**extra),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped with the runtime it may have started
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert process.poll() is None, f"serve exited:\n{log.read_text(errors='replace')}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"serve not up:\n{log.read_text(errors='replace')}"
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_serve_from_the_wheel_forwards_to_the_upstream_and_report_reads_its_audit(
    installed: Installed,
) -> None:
    fake = FakeUpstream()
    body = {
        "model": "packaged-model",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with (
        ServerThread(fake.app) as upstream,
        serving(installed, "--upstream", upstream.url) as gateway,
    ):
        health = httpx.get(f"{gateway}/healthz", trust_env=False).json()
        assert health["version"] == version("prefixgate")
        answer = httpx.post(
            f"{gateway}/v1/messages",
            json=body,
            headers={"x-api-key": "dummy", "anthropic-version": "2023-06-01"},
            timeout=30,
            trust_env=False,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["content"][0]["text"] == ANSWER
    assert fake.models == ["packaged-model"]
    # serve wrote its audit where a user's would go (under HOME, not the repository)
    audit = installed.home / ".local" / "state" / "prefixgate" / "audit.db"
    assert audit.is_file()
    report = installed.run("report", "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["totals"]["requests"] == 1


def test_demo_outside_a_checkout_says_what_it_needs(installed: Installed) -> None:
    done = installed.run("demo", COLUMNS="200")
    assert done.returncode == 2
    assert "No recorded requests found" in done.stdout
    assert "--corpus FILE" in done.stdout


# Loaded first by every Python process of the bundled-runtime test below: a
# connection anywhere but loopback, or a name looked up that is not local, is
# written to $NETWORK_LOG and refused.
NETWORK_GUARD = """
import os, socket

_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")
_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo


def _refuse(what):
    with open(os.environ["NETWORK_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{what}\\n")
    raise OSError(f"no network in this test: {what}")


def connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if isinstance(host, str) and not host.startswith(_LOCAL):
        _refuse(f"connect {address}")
    return _connect(self, address)


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name and not name.startswith(_LOCAL):
        _refuse(f"getaddrinfo {name}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
"""

# llama-server's flags that fetch a model or a file (it is not Python: its command
# line is checked instead)
DOWNLOAD_FLAGS = ("-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url")


@pytest.mark.e2e
def test_serve_from_the_wheel_with_the_bundled_runtime_downloads_nothing(
    installed: Installed, tmp_path: Path
) -> None:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD, encoding="utf-8")
    network_log = tmp_path / "network.log"
    from prefixgate.runtime.local import cache_dir

    extra = {
        "PYTHONPATH": str(guard),
        "NETWORK_LOG": str(network_log),
        # the model assembled once from its package (a user's cache, shared with the
        # other tests so it is not assembled again)
        "PREFIXGATE_CACHE_DIR": str(cache_dir()),
    }
    code = (
        "import socket\n"
        "assert socket.getaddrinfo.__module__ == 'sitecustomize', 'the guard is not loaded'\n"
        "from prefixgate.runtime.local import build_command, default_spec\n"
        "print('\\n'.join(build_command(default_spec(), 8080)))\n"
    )
    command = subprocess.run(
        [str(installed.python), "-c", code],
        cwd=installed.outside,
        env=installed.environ(**extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert command.returncode == 0, command.stderr
    flags = command.stdout.splitlines()
    assert not set(flags) & set(DOWNLOAD_FLAGS), flags
    template = Path(flags[flags.index("--chat-template-file") + 1])
    assert template.is_relative_to(installed.env), template
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    args = ("--saved-prefix-bytes", "0")  # nothing written into the shared cache
    with serving(installed, *args, startup_s=300, **extra) as gateway:
        answer = httpx.post(
            f"{gateway}/v1/messages",
            json=body,
            headers={"x-api-key": "dummy", "anthropic-version": "2023-06-01"},
            timeout=300,
            trust_env=False,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["type"] == "message"
    assert not network_log.exists(), network_log.read_text(encoding="utf-8")
