"""Parse a message the SMTP sink wrote, with Python's own `email` package (an
independent MIME implementation), and print what a mail client would see as JSON.

Usage: python mime_parse.py FILE.eml
"""
import base64
import email
import email.policy
import json
import sys

with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f, policy=email.policy.default)

parts = []
for part in msg.walk():
    if part.is_multipart():
        continue
    payload = part.get_payload(decode=True) or b""
    parts.append(
        {
            "content_type": part.get_content_type(),
            "charset": part.get_content_charset(),
            "filename": part.get_filename(),
            "disposition": part.get_content_disposition(),
            "content_b64": base64.b64encode(payload).decode(),
        }
    )

print(
    json.dumps(
        {
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "reply_to": str(msg["reply-to"]) if msg["reply-to"] else None,
            "message_id": str(msg["message-id"]),
            "date": str(msg["date"]),
            "auto_submitted": str(msg["auto-submitted"]) if msg["auto-submitted"] else None,
            "content_type": msg.get_content_type(),
            "headers": [k for k in msg.keys()],
            "parts": parts,
        }
    )
)
