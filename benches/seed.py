"""Seed an authbase database (already migrated by authbase) with N users and N confirmed
sessions whose cookie values are known, and write the first W cookie values to a file.

Usage: python seed.py DB N W TOKENS_FILE
Cookie value i = base64url(sha256("bench-<i>")) without padding (43 characters, the shape
authbase issues); the database stores sha256(cookie value), as authbase does.
"""
import base64
import hashlib
import sqlite3
import sys
import time


def token(i):
    return base64.urlsafe_b64encode(hashlib.sha256(f"bench-{i}".encode()).digest()).rstrip(b"=").decode()


def main():
    db, n, w, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    now = int(time.time())
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")
    with c:
        c.executemany(
            "INSERT INTO users (id, email, created_at) VALUES (?, ?, ?)",
            ((i + 1, f"user{i}@example.com", now) for i in range(n)),
        )
        c.executemany(
            "INSERT INTO sessions (token_hash, user_id, confirmed, created_at, last_seen_at, expires_at) "
            "VALUES (?, ?, 1, ?, ?, ?)",
            (
                (hashlib.sha256(token(i).encode()).digest(), i + 1, now, now, now + 30 * 86400)
                for i in range(n)
            ),
        )
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    with open(out, "w") as f:
        for i in range(w):
            f.write(token(i) + "\n")


if __name__ == "__main__":
    main()
