"""A real SMTP server for the test suite (aiosmtpd), writing each message to a folder.

Usage: python smtp_sink.py --dir DIR [--port N | --fd N] [--delay-ms N]
Prints "PORT <n>" on stdout once it accepts connections (port 0 picks a free one).
--fd serves on an inherited TCP socket, bound by the test (which holds its port until the
server starts, so nothing else can take it).
Each message becomes DIR/<n>.eml; the envelope goes to DIR/<n>.env as
"MAIL FROM" and one "RCPT TO" line per recipient, so tests can see smuggled recipients.
--delay-ms makes each DATA take that long (a slow server, for queueing tests).
"""
import argparse
import asyncio
import os
import signal
import socket

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, folder, delay):
        self.folder = folder
        self.delay = delay
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.n += 1
        base = os.path.join(self.folder, f"{self.n:05d}")
        with open(base + ".env.tmp", "w") as f:
            f.write(f"MAIL FROM {envelope.mail_from}\n")
            for r in envelope.rcpt_tos:
                f.write(f"RCPT TO {r}\n")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(base + ".env.tmp", base + ".env")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK"


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fd", type=int)
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args()
    handler = Handler(a.dir, a.delay_ms / 1000)
    loop = asyncio.get_running_loop()
    factory = lambda: SMTP(handler, hostname="sink.test")  # noqa: E731
    if a.fd is not None:
        server = await loop.create_server(factory, sock=socket.socket(fileno=a.fd))
    else:
        server = await loop.create_server(factory, "127.0.0.1", a.port)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    server.close()


asyncio.run(main())
