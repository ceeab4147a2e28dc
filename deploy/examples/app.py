#!/usr/bin/env python3
"""A protected upstream app behind authbase (standard library only).

The proxy (nginx auth_request, Traefik forwardAuth, Caddy forward_auth) asks authbase
before every request and passes the signed-in user as X-User-Id / X-User-Email.

SECURITY: this app must be reachable ONLY through the proxy. Anyone who can connect to
it directly can send any X-User-Id / X-User-Email they like. Keep it on 127.0.0.1 or on
a private network the proxy alone can reach; never publish its port.

Run: python3 app.py          (HOST and PORT env override 127.0.0.1:8080)
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with the proxy's upstream pool

    def do_GET(self):
        user_id = self.headers.get("X-User-Id", "").strip()
        email = self.headers.get("X-User-Email", "").strip()
        if user_id and email:
            status, text = 200, f"Hello {email} (user {user_id})\n"
        else:
            status, text = 401, "401 Unauthorized: no X-User-Id / X-User-Email from the proxy\n"
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # other methods get 501 (and the connection is closed)


if __name__ == "__main__":
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    print(f"app listening on http://{host}:{port}", flush=True)
    ThreadingHTTPServer((host, port), Handler).serve_forever()
