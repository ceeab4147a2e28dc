#!/usr/bin/env python3
"""An upstream app that emails its signed-in user through authbase (standard library only).

It sits behind the proxy like app.py. `POST /export` builds a small CSV "export" and asks
authbase to mail it to the user the proxy named in X-User-Id: one HTTP call, no SMTP
setup in the app. authbase queues the message durably and retries it if the mail server
is down.

Configuration (environment):
  AUTHBASE_API_URL         authbase's API listener, e.g. http://127.0.0.1:9093
                           (api.listen; or authbase's main address when api.listen is empty)
  AUTHBASE_API_TOKEN_FILE  file holding the API token (api.token_file), or
  AUTHBASE_API_TOKEN       the token itself
  HOST, PORT               where this app listens (default 127.0.0.1:8080)

SECURITY: like app.py, reachable ONLY through the proxy; X-User-Id is trusted as given.

Run: AUTHBASE_API_URL=http://127.0.0.1:9093 AUTHBASE_API_TOKEN_FILE=/etc/authbase/api_token \
       python3 notify_app.py
"""
import base64
import json
import os
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def api_token():
    path = os.environ.get("AUTHBASE_API_TOKEN_FILE")
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ["AUTHBASE_API_TOKEN"]


def send_email(user_id, subject, text=None, html=None, attachments=(), idempotency_key=None):
    """Queue an email to a user; returns authbase's answer ({"id": ..., "message_id": ...}).

    The original library's send_email(recipient, subject, html, attachments), over HTTP.
    `attachments` are (filename, content_type, bytes). An `idempotency_key` makes a
    retried call (after a timeout, say) queue the message only once.
    """
    body = {"user_id": int(user_id), "subject": subject}
    if text is not None:
        body["text"] = text
    if html is not None:
        body["html"] = html
    body["attachments"] = [
        {"filename": name, "content_type": ctype, "content": base64.b64encode(data).decode()}
        for name, ctype, data in attachments
    ]
    req = urllib.request.Request(
        os.environ["AUTHBASE_API_URL"].rstrip("/") + "/api/email",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": "Bearer " + api_token(),
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key or str(uuid.uuid4()),
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, text):
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        user_id = self.headers.get("X-User-Id", "").strip()
        email = self.headers.get("X-User-Email", "").strip()
        if not user_id:
            return self.reply(401, "401 Unauthorized: no X-User-Id from the proxy\n")
        if self.path != "/export":
            return self.reply(404, "404 Not Found\n")
        csv = "user,email\n%s,%s\n" % (user_id, email)
        try:
            queued = send_email(
                user_id,
                "Your export is ready",
                text="Hello,\n\nyour export is attached.\n",
                html="<p>Hello,</p><p>your export is attached.</p>",
                attachments=[("export.csv", "text/csv", csv.encode())],
            )
        except urllib.error.HTTPError as e:
            # authbase explains itself in JSON: 401 token, 409 blocked user, 429 ceiling, ...
            return self.reply(502, "authbase refused: %s %s\n" % (e.code, e.read().decode()))
        except OSError as e:
            return self.reply(502, "authbase unreachable: %s\n" % e)
        self.reply(202, "We are emailing your export to %s (message %s).\n" % (email, queued["id"]))


if __name__ == "__main__":
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    print(f"notify app on http://{host}:{port}/export", flush=True)
    ThreadingHTTPServer((host, port), Handler).serve_forever()
