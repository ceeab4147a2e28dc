// A protected upstream app behind authbase (Node.js, built-in http module only).
//
// The proxy (nginx auth_request, Traefik forwardAuth, Caddy forward_auth) asks authbase
// before every request and passes the signed-in user as X-User-Id / X-User-Email.
//
// SECURITY: this app must be reachable ONLY through the proxy. Anyone who can connect to
// it directly can send any X-User-Id / X-User-Email they like. Keep it on 127.0.0.1 or on
// a private network the proxy alone can reach; never publish its port.
//
// Run: node app.js          (HOST and PORT env override 127.0.0.1:8080)
"use strict";
const http = require("http");

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 8080);

http
  .createServer((req, res) => {
    // Node lower-cases header names.
    const userId = (req.headers["x-user-id"] || "").trim();
    const email = (req.headers["x-user-email"] || "").trim();
    const [status, text] =
      userId && email
        ? [200, `Hello ${email} (user ${userId})\n`]
        : [401, "401 Unauthorized: no X-User-Id / X-User-Email from the proxy\n"];
    res.writeHead(status, {
      "Content-Type": "text/plain; charset=utf-8",
      "Content-Length": Buffer.byteLength(text),
      "Cache-Control": "no-store",
    });
    res.end(req.method === "HEAD" ? undefined : text);
  })
  .listen(port, host, () => console.log(`app listening on http://${host}:${port}`));
