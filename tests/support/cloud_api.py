"""A local HTTP server standing in for the Fly Machines and Hetzner Cloud APIs: it records every
request (method, path, headers, JSON body) and answers like the real API does."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Responder = Callable[[str, str, dict | None], tuple[int, dict]]


class RecordingApi:
    def __init__(self, respond: Responder) -> None:
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "body": body,
                        "authorization": self.headers.get("Authorization"),
                    }
                )
                status, payload = respond(self.command, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RecordingApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]


def fly(fail_machine: bool = False) -> Responder:
    def respond(method: str, path: str, body: dict | None) -> tuple[int, dict]:
        if method == "POST" and path == "/v1/apps":
            return 201, {}
        if method == "POST" and path.endswith("/volumes"):
            return 200, {"id": "vol_123", "name": body["name"], "region": body["region"]}
        if method == "POST" and path.endswith("/machines"):
            if fail_machine:
                return 422, {"error": "no capacity in region"}
            return 200, {"id": "m_456", "state": "created"}
        if method == "DELETE":
            return 200, {"ok": True}
        return 404, {"error": "not found"}

    return respond


def hetzner() -> Responder:
    def respond(method: str, path: str, body: dict | None) -> tuple[int, dict]:
        if method == "POST" and path == "/firewalls":
            return 201, {"firewall": {"id": 38, "name": body["name"]}, "actions": []}
        if method == "POST" and path == "/servers":
            return 201, {
                "server": {"id": 42, "name": body["name"], "public_net": {"ipv4": {"ip": "203.0.113.7"}}},
                "action": {"id": 1, "status": "running"},
                "root_password": None,
            }
        if method == "DELETE":
            return 200, {"action": {"id": 2}}
        return 404, {"error": {"code": "not_found"}}

    return respond
