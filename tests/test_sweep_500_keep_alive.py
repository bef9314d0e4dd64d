"""An unhandled error answers 500 in the API's error shape and keeps the connection (issue 22,
finding 10: each of the sweep 500s also dropped the client's keep-alive connection, and with
it any request pipelined behind). Starlette's error middleware answers, then re-raises for
the server to log, and uvicorn closes a connection on which the app raised. The whole app
in this process under a real uvicorn (the point is the connection), on SQLite."""

import socket
import threading
import time

import uvicorn

from tests.inference_helpers import free_port
from tests.inprocess import make_app
from tests.test_keep_alive import _answer


def test_an_unhandled_error_is_a_500_on_a_kept_connection(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch) as app:
        def boom() -> None:
            raise RuntimeError("a bug")

        app.add_api_route("/v1/boom", boom)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="critical", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.05)
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /v1/boom HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                             b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # pipelined
                first = _answer(sock)
                head, _, body = first.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 500 "), first
                assert b"connection: close" not in head.lower(), head
                assert body == (b'{"error":{"code":"internal_error","message":"internal '
                                b'server error","param":null}}')
                assert _answer(sock).startswith(b"HTTP/1.1 200 "), "the connection was closed"
                sock.sendall(b"GET /v1/boom HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert _answer(sock).startswith(b"HTTP/1.1 500 ")
        finally:
            server.should_exit = True
            thread.join(timeout=10)
