"""A webhook receiver for the tests: verifies every delivery with the Standard
Webhooks reference library (PyPI `standardwebhooks`), an implementation independent
of memhub's, and appends what it got to a JSON Lines log.

Usage: webhook_receiver.py DIR. It writes DIR/port, reads the secret from DIR/secret,
answers with the status in DIR/status (default 200) after the delay in DIR/delay_ms
(default 0), and logs to DIR/received.jsonl: a {"started": msg_id} line when a
request arrives, then the delivery.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

DIR = sys.argv[1]
LOCK = threading.Lock()


def read(name, default):
    try:
        with open(os.path.join(DIR, name)) as f:
            return f.read().strip() or default
    except FileNotFoundError:
        return default


def log(entry):
    with LOCK, open(os.path.join(DIR, "received.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        msg_id = self.headers.get("webhook-id")
        log({"started": msg_id})
        try:
            payload = Webhook(read("secret", "")).verify(body, dict(self.headers))
            verified = True
        except WebhookVerificationError as e:
            payload, verified = json.loads(body), False
            log({"refused": str(e)})
        time.sleep(int(read("delay_ms", "0")) / 1000)
        status = int(read("status", "200"))
        log({"msg_id": msg_id, "verified": verified, "status": status, "at": time.time(),
             "seqs": [c["seq"] for c in payload["data"]["changes"]],
             "memory_ids": [c.get("memory_id") for c in payload["data"]["changes"]]})
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
