"""A webhook receiver for keyroll's end-to-end tests, verifying with an independent Standard
Webhooks implementation (the `standardwebhooks` package from PyPI), not keyroll's code.

Usage: webhook_receiver.py CONFIG RESULTS PORT_FILE [CERT KEY]

With CERT and KEY (PEM files) it serves HTTPS with that certificate; without them, HTTP.

CONFIG (read on every request, so the test can change it) maps a path to its endpoint:
    {"/main": {"secrets": ["whsec_…", …], "mode": "fail_first" | "ok" | "gone" | "busy"}}
Every request is verified with each secret separately (so a test sees that either secret of a
rotation verifies). Modes: fail_first answers 500 to the first request on the path (the injected
failure) and 204 afterwards; gone answers 410; busy answers 503 with Retry-After: 3600; ok 204.
RESULTS is rewritten after each request: per path, every request with its webhook-id, type,
which secrets verified it, what was answered, and the raw body.
"""

import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

CONFIG, RESULTS, PORT_FILE = sys.argv[1:4]
LOCK = Lock()
SEEN = {}


def config():
    try:
        with open(CONFIG) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save():
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(SEEN, f)
    os.replace(tmp, RESULTS)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        endpoint = config().get(self.path)
        with LOCK:
            requests = SEEN.setdefault(self.path, [])
            if endpoint is None:
                status, extra = 404, {}
            else:
                mode = endpoint.get("mode", "ok")
                if mode == "gone":
                    status, extra = 410, {}
                elif mode == "busy":
                    status, extra = 503, {"Retry-After": "3600"}
                elif mode == "fail_first" and not requests:
                    status, extra = 500, {}
                else:
                    status, extra = 204, {}
            verified = []
            errors = []
            for i, secret in enumerate((endpoint or {}).get("secrets", [])):
                try:
                    Webhook(secret).verify(body, headers)
                    verified.append(i)
                except WebhookVerificationError as e:
                    errors.append(f"secret {i}: {e}")
            parsed = None
            try:
                parsed = json.loads(body)
            except ValueError:
                pass
            requests.append({
                "id": headers.get("webhook-id") or headers.get("Webhook-Id"),
                "type": (parsed or {}).get("type"),
                "version": ((parsed or {}).get("data") or {}).get("version"),
                "verified_with": verified,
                "errors": errors,
                "answered": status,
                "body": body.decode("utf-8", "replace"),
            })
            save()
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) >= 6:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = context.wrap_socket(server.socket, server_side=True)
with LOCK:
    save()
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
