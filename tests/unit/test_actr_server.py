"""actr-engine's HTTP front: bearer token, body cap and slow clients (no database).

The real server module and handler run on 127.0.0.1 in a thread. Test doubles: ``psycopg`` is
a stand-in module (the controller has no libpq; the guard never reaches the database), and
``EngineDouble`` answers ``store``/``retrieve`` from memory, so a request that passes the
guard shows its answer.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "actr-engine"))
if "psycopg" not in sys.modules:
    _psycopg_double = types.ModuleType("psycopg")
    _psycopg_double.Error = type("Error", (Exception,), {})  # type: ignore[attr-defined]
    _psycopg_double.Connection = object  # type: ignore[attr-defined]
    sys.modules["psycopg"] = _psycopg_double

from actr_engine.server import Config, Engine, Refused, check_request, handler_for

TOKEN = "t0k3n-Lr8sQ2vW9xZ4cB7n"


class EngineDouble(Engine):
    """Stores and retrieves in memory; counts the requests that got through."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.stored: list[dict[str, Any]] = []

    def store(self, payload: dict[str, Any]) -> int:
        self.stored.append(payload)
        return len(self.stored)

    def retrieve(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"chunks": [], "elapsed_ms": 0.0}

    def record_access(self, answer: dict[str, Any]) -> None:
        pass

    def release(self) -> None:
        pass

    def healthy(self) -> bool:
        return True


def _config(**changes: Any) -> Config:
    base = dict(
        listen_host="127.0.0.1", listen_port=0, database="", password=None, decay=0.5,
        mismatch_penalty=1.0, threshold=None, candidates=20, embedder_url=None,
        embedder_model="m", api_token=TOKEN, max_body=4096, client_timeout=1.0,
    )  # fmt: skip
    return Config(**{**base, **changes})


@pytest.fixture
def served() -> Iterator[tuple[int, EngineDouble]]:
    engine = EngineDouble(_config())
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(engine))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], engine
    finally:
        server.shutdown()
        server.server_close()


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/chunks", "/retrieve"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
def test_state_changing_endpoints_need_the_token(served, path: str, headers: dict) -> None:
    port, engine = served
    status, answer = _post(port, path, b'{"content": "x"}', headers)
    assert status == 401 and "bearer token" in answer["error"]
    assert engine.stored == []


def test_with_the_token_a_memory_is_stored(served) -> None:
    port, engine = served
    status, answer = _post(port, "/chunks", b'{"content": "apple"}', _auth())
    assert (status, answer) == (201, {"id": 1})
    assert engine.stored == [{"content": "apple"}]


def test_health_and_metrics_stay_open(served) -> None:
    port, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for path in ("/health", "/metrics"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, path


def test_a_body_over_the_cap_is_refused_before_it_is_read(served) -> None:
    port, engine = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        # Claims 1 GiB and sends none of it: the answer comes at once, from the length alone.
        raw.sendall(
            b"POST /chunks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 1073741824\r\n\r\n"
        )  # fmt: skip
        answer = raw.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413") and "Connection: close" in answer
    assert engine.stored == []


def test_a_slow_client_is_cut_off_and_others_are_served_meanwhile(served) -> None:
    port, engine = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(
            b"POST /chunks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 100\r\n\r\n{"
        )  # fmt: skip
        started = time.monotonic()
        # Another client is served while the slow one stalls.
        assert _post(port, "/chunks", b'{"content": "pear"}', _auth())[0] == 201
        for _ in range(3):  # a byte now and then, each well inside the per-read timeout
            time.sleep(0.4)
            try:
                slow.sendall(b" ")
            except OSError:
                break
        answer = slow.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    assert engine.stored == [{"content": "pear"}]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Authorization": f"Bearer {TOKEN}"}, 411),
        ({"Authorization": f"Bearer {TOKEN}", "Content-Length": "ten"}, 400),
        ({"Authorization": f"Bearer {TOKEN}", "Content-Length": "-1"}, 413),
        ({"Authorization": f"Bearer {TOKEN}x", "Content-Length": "1"}, 401),
    ],
)
def test_check_request_refusals(headers: dict[str, str], status: int) -> None:
    with pytest.raises(Refused) as refused:
        check_request(headers, TOKEN, 4096)
    assert refused.value.status == status


def test_without_a_configured_token_nothing_passes() -> None:
    with pytest.raises(Refused) as refused:
        check_request({"Authorization": "Bearer ", "Content-Length": "1"}, None, 4096)
    assert refused.value.status == 401


def test_the_token_comes_from_the_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text(TOKEN + "\n")
    (tmp_path / "db-password").write_text("pw\n")
    config = Config.from_environment({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.api_token == TOKEN and config.max_body == 1024 * 1024
    assert Config.from_environment({}).api_token is None


class ConnectionDouble:
    """Records the statements ``Engine.store`` sends; answers every INSERT with id 7."""

    closed = False

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple]] = []

    def transaction(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def execute(self, sql: str, params: tuple = ()) -> Any:
        self.statements.append((sql, params))
        return types.SimpleNamespace(fetchone=lambda: (7,))


@pytest.fixture
def embedding_server_double() -> Iterator[tuple[str, list[dict]]]:
    """An OpenAI-style /v1/embeddings that answers [0.6, 0.8] from model "double-minilm"."""
    from http.server import BaseHTTPRequestHandler

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"model": "double-minilm", "data": [{"embedding": [0.6, 0.8]}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/embeddings", received
    finally:
        server.shutdown()
        server.server_close()


def _engine_with(embedder_url: str | None, **changes: Any) -> tuple[Engine, ConnectionDouble]:
    engine = Engine(_config(embedder_url=embedder_url, embedder_model="", **changes))
    conn = ConnectionDouble()
    engine.local.conn = conn
    return engine, conn


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_text_is_embedded_by_the_server_and_its_model_recorded(embedding_server_double) -> None:
    url, received = embedding_server_double
    engine, conn = _engine_with(url)
    assert engine.store({"content": "apple pie"}) == 7
    insert = conn.statements[0][1]
    assert insert[2] == "[0.6,0.8]" and insert[3] == "double-minilm"
    # No model named by the engine: the server embeds with its own (a renamed model still works).
    assert received == [{"input": "apple pie"}]


def test_a_memory_is_kept_when_the_embedding_server_is_down() -> None:
    engine, conn = _engine_with(f"http://127.0.0.1:{_closed_port()}/v1/embeddings")
    assert engine.store({"content": "kept anyway"}) == 7
    insert = conn.statements[0][1]
    assert insert[0] == "kept anyway"
    assert insert[2] is None and insert[3] is None  # left to the vector indexer
    assert "actr_engine_embeddings_deferred_total 1" in engine.metrics.text()


def test_a_text_cue_fails_loudly_when_the_embedding_server_is_down() -> None:
    engine, _ = _engine_with(f"http://127.0.0.1:{_closed_port()}/v1/embeddings")
    with pytest.raises(OSError):
        engine.retrieve({"cue": "apples"})


def test_each_new_connection_searches_wider_than_pgvectors_default(monkeypatch) -> None:
    """pgvector's hnsw.ef_search of 40 missed the nearest memory among thousands of near-equal
    ones in the lab (0.655 similar, found with 60); every connection sets the configured one."""
    conn = ConnectionDouble()
    monkeypatch.setattr(
        sys.modules["actr_engine.server"].psycopg, "connect", lambda *a, **k: conn, raising=False
    )
    engine = Engine(_config(ef_search=120))
    assert engine.connection() is conn
    assert conn.statements == [("SET hnsw.ef_search = 120", ())]
    assert Config.from_environment({"ACTR_API_TOKEN_FILE": ""}).ef_search == 100
    assert Config.from_environment({"ACTR_EF_SEARCH": "250"}).ef_search == 250
