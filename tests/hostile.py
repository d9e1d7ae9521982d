"""A hostile peer for tests: an HTTP server that answers the plugin list with what a
node never should. Not a mock of our client's HTTP: a different server, really served."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        mode = self.server.mode
        if mode == "silent":
            time.sleep(30)
            return
        if mode == "redirect":
            self._reply(302, b"", {"Location": "http://127.0.0.1:1/elsewhere"})
        elif mode == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while not self.server.stopping.is_set():
                    self.wfile.write(b"1\r\n[\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
            except OSError:
                pass
        else:
            body = {"html": b"<html><body>502 Bad Gateway</body></html>",
                    "empty": b"", "invalid": b"{not json", "nonstrings": b"[1, {\"a\": 2}]",
                    "object": b'{"plugins": ["a"]}',
                    "huge": b"[" + b'"x",' * (10 * 1024 * 1024 // 4) + b'"x"]'}[mode]
            kind = "text/html" if mode == "html" else "application/json"
            self._reply(200, body, {"Content-Type": kind})

    do_POST = do_DELETE = do_GET

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HostileServer:
    def __init__(self, mode: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.mode = mode
        self.server.stopping = threading.Event()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
