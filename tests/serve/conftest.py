"""Live servers for the serve tests: ``danlu serve`` run as a real process on 127.0.0.1.

``live_registry`` (once per session) trains and registers small models in a temporary home:
wine versions 1 and 2 (``production`` → 1) and the digits CNN, then copies that home before any
API key exists (``keyless_home``) and creates an admin and a predict key in the original.
``start_server`` runs ``python -m danlu serve ...`` on an ephemeral port, waits (bounded) for
``/readyz``, and on exit sends SIGTERM and checks the process drained and exited with 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

STARTUP_S = 60  # longest wait for a server to answer /readyz
SHUTDOWN_S = 30  # longest wait for a server to exit after SIGTERM
# 64 KB holds 90 rows of wine's 13 features at 40 bytes a value (so wine takes --max-rows 64) and
# 19 of digits' 64 (so digits takes 19: the server says so in its spec and its 413s)
LIVE_OPTIONS = ("--max-body", "64KB", "--max-rows", "64", "--max-queue", "64", "--poll", "0")

_RECIPES = {
    "wine": {
        "name": "w",
        "data": {"source": "builtin:wine"},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [16]},
        "train": {"epochs": 2, "checkpoint": {"every": 0}},
        "register": {"name": "wine", "alias": "production"},
    },
    "digits": {
        "name": "d",
        "data": {"source": "builtin:digits"},
        "task": "classification",
        "model": {"type": "cnn", "channels": [8], "hidden": 16},
        "train": {"epochs": 1, "checkpoint": {"every": 0}},
        "register": {"name": "digits", "alias": "production"},
    },
}


@dataclass(frozen=True)
class LiveRegistry:
    """A home with registered models and keys, and a copy of it without keys."""

    home: Path
    keyless_home: Path
    admin: str  # secrets
    predict: str
    row: dict[str, float]  # a valid wine row


@dataclass
class LiveServer:
    """A running ``danlu serve`` process."""

    url: str
    port: int
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def live_registry(tmp_path_factory: pytest.TempPathFactory) -> LiveRegistry:
    from danlu import pipeline
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("live-home")
    store = SqlStore(home=home)
    try:
        for _ in range(2):
            pipeline.run(_RECIPES["wine"], store=store, home=home)
        pipeline.run(_RECIPES["digits"], store=store, home=home)
        store.set_alias("wine", "production", 1)
        row = {f["name"]: 1.0 for f in store.get_model_version("wine", 1).signature["inputs"]}
    finally:
        store.close()
    keyless = tmp_path_factory.mktemp("live-keyless") / "home"
    shutil.copytree(home, keyless)  # before any key exists
    store = SqlStore(home=home)
    try:
        admin = store.create_api_key("admin", name="live-admin")[1]
        predict = store.create_api_key("predict", name="live-predict")[1]
    finally:
        store.close()
    return LiveRegistry(home, keyless, admin, predict, row)


def serve_command(*args: str) -> list[str]:
    """``danlu serve ARGS`` as a command line of this interpreter."""
    return [sys.executable, "-m", "danlu", "serve", *args]


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DANLU_DB_URL"}
    return {**env, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@contextmanager
def start_server(home: Path, *args: str, log_dir: Path) -> Iterator[LiveServer]:
    """``danlu serve ARGS --port 0`` on 127.0.0.1 until the block ends; then SIGTERM, and the
    process must exit 0 within SHUTDOWN_S."""
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            serve_command(*args, "--host", "127.0.0.1", "--port", "0"),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(home),
        )
    try:
        port = _wait_for_port(process, log_path)
        url = f"http://127.0.0.1:{port}"
        _wait_until_ready(process, url, log_path)
        yield LiveServer(url, port, home, process, log_path)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=SHUTDOWN_S)
        assert code == 0, f"the server exited with {code}:\n{log_path.read_text()[-4000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        assert process.poll() is None, f"the server exited:\n{log_path.read_text()[-4000:]}"
        time.sleep(0.05)
    raise AssertionError(f"the server did not start in {STARTUP_S} s:\n{log_path.read_text()}")


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the server exited:\n{log_path.read_text()[-4000:]}"
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"/readyz never answered 200 in {STARTUP_S} s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def live_server(
    live_registry: LiveRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """wine@production and digits@production behind a real server, with keys configured (so
    predict needs a key too), a 64 KB body cap, 64 rows per request and a 64-request queue."""
    log_dir = tmp_path_factory.mktemp("live-server")
    args = ("wine@production", "digits@production", *LIVE_OPTIONS, "--timeout", "10")
    with start_server(live_registry.home, *args, log_dir=log_dir) as server:
        yield server


def assert_no_leak(text: str, *secrets: Any) -> None:
    """An error body carries no traceback, file path, SQL or secret."""
    lowered = text.lower()
    for marker in ("traceback", 'file "', "site-packages", "pytest-of", ".py", "sqlalchemy"):
        assert marker not in lowered, f"{marker!r} leaked into {text!r}"
    for sql in ("select ", "insert into", "update ", "delete from", "sqlite"):
        assert sql not in lowered, f"SQL ({sql!r}) leaked into {text!r}"
    for secret in secrets:
        assert str(secret) not in text, f"{secret!r} leaked into {text!r}"


@contextmanager
def running_server(app: Any, settings: Any, host: str | None = None) -> Iterator[tuple[Any, str]]:
    """uvicorn on 127.0.0.1 (an ephemeral port) in a thread of this process, for an app built
    here; stopped gracefully, bounded in time. ``host`` binds there instead of the settings'
    host (an app configured as off loopback, bound to 127.0.0.1)."""
    from danlu.serve._server import make_server

    where = {"host": host} if host else {}
    server = make_server(app, settings, port=0, log_level="warning", **where)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.handle_exit(15, None)  # what SIGTERM does
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server did not stop"


def spec_validator(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema validator of ``schema`` (a part of the OpenAPI document ``spec``, whose
    refs point into its components)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**schema, "components": spec["components"]})


def route_validators(spec: dict[str, Any], path: str) -> tuple[Any, Any]:
    """Validators of the JSON request body and the JSON 200 answer the spec declares for
    ``POST path``."""
    operation = spec["paths"][path]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return spec_validator(spec, body), spec_validator(spec, answer)
