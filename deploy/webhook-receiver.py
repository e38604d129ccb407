#!/usr/bin/env python3
"""A minimal webhook receiver that verifies Standard Webhooks signatures with Python's hmac.

Usage: webhook-receiver.py PORT WHSEC_SECRET [OUT_FILE]
Each verified delivery is printed (and appended to OUT_FILE as one JSON line:
{"webhookId", "verified", "body"}). Answers 204 when the signature verifies, 401 otherwise.
"""
import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT = int(sys.argv[1])
SECRET = sys.argv[2]
OUT = sys.argv[3] if len(sys.argv) > 3 else None
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))


def verify(headers, body):
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(timestamp)) > 300:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    for sig in headers.get("webhook-signature", "").split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        ok = verify(self.headers, body)
        record = {"webhookId": self.headers.get("webhook-id"), "verified": ok, "body": body.decode()}
        print(json.dumps(record), flush=True)
        if OUT:
            with open(OUT, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
