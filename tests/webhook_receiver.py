"""Webhook receivers for tests, on loopback in threads: one that answers at once, and a
slow one (the probes of issue 22); and names that resolve to them."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import pytest


class Receiver:
    """An HTTP server on loopback that records each POST and answers from `answers`
    (then 200)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append((dict(self.headers), body))
                    code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                if code in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [json.loads(body)["event"] for _, body in self.received]

    def job_ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SlowReceiver:
    """A receiver that reads each request and then answers one byte every `every` seconds:
    "body" sends its head at once (200, Content-Length: 100) and drips the body, as the
    audit's probe did; "head" drips the head itself; "silent" never answers. Counts the
    connections it holds at once."""

    def __init__(self, mode: Literal["body", "head", "silent"], every: float = 0.2) -> None:
        self.mode, self.every = mode, every
        self.requests = 0
        self.open = self.most_open = 0
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.requests += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            drip = b"x" * 100
            if self.mode == "body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            elif self.mode == "head":
                drip = b"HTTP/1.1 200 OK\r\n" + b"".join(
                    b"X-Slow-%d: 1\r\n" % i for i in range(100)) + b"\r\n"
            while not self.closed.is_set():
                if self.mode != "silent":
                    if not drip:
                        break
                    conn.sendall(drip[:1])
                    drip = drip[1:]
                time.sleep(self.every)
                if self.mode == "silent" and _peer_closed(conn):
                    break
        except OSError:
            pass  # the sender gave up and closed
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def _peer_closed(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    finally:
        conn.setblocking(True)


def resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> None:
    """Resolve these names to these addresses (others as usual)."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            family = socket.AF_INET6 if ":" in names[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
