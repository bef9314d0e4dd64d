"""`cloze api` keeps an idle keep-alive connection open past uvicorn's 5 s default: a load
balancer (60 s idle on AWS ALB and nginx) or a client pool that reuses a connection the
server is just closing gets a 502 or a ReadError; CLOZE_KEEP_ALIVE_S (65) outlasts them."""

import socket
import time

from tests import inference_helpers as helpers

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    """One whole response (headers, then the body's Content-Length bytes), so the next read
    starts at the next response; what came before the server closed the connection, if it
    did."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def _length(data: bytes) -> int:
    """The whole response's length, once its headers are in."""
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4


def test_an_idle_keep_alive_connection_outlives_uvicorns_default(tmp_path):
    with helpers.api_process(tmp_path / "home", {"CLOZE_KEEP_ALIVE_S": "8"}) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(REQUEST)
            assert _answer(sock).startswith(b"HTTP/1.1 ")
            time.sleep(6)  # past uvicorn's 5 s default, within the setting's 8 s
            sock.sendall(REQUEST)
            assert _answer(sock).startswith(b"HTTP/1.1 "), "the server closed the connection"
            time.sleep(9.5)  # past the setting: the server has closed it
            assert _answer(sock) == b""
