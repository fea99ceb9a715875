#!/usr/bin/env python3
"""A small app for the delivery end-to-end test: calls a keyroll-protected endpoint
continuously with its key and records every answer.

The key comes from a file the agent keeps current (--key-file, read before every request, as an
app that re-reads its secret would) or from the environment (--env-var, as under `keyroll run`,
which restarts the app with the new key). Each answer is one JSON line in --out:
{"t": unix seconds, "status": 200, "kid": "...", "code": "..."}. Stops cleanly on SIGTERM.
"""

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

stop = False


def on_term(_signum, _frame):
    global stop
    stop = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--key-file")
    src.add_argument("--env-var")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--client-id", default="app")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(args.out, "a", buffering=1) as out:
        while not stop:
            if args.key_file:
                with open(args.key_file) as f:
                    key = f.read().strip()
            else:
                key = os.environ[args.env_var]
            req = urllib.request.Request(
                args.url,
                headers={
                    "Authorization": "Bearer " + key,
                    "User-Agent": args.client_id,
                    "X-Client-Id": args.client_id,
                },
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    status, headers = r.status, r.headers
            except urllib.error.HTTPError as e:
                status, headers = e.code, e.headers
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                out.write(json.dumps({"t": time.time(), "status": 0, "error": str(e)}) + "\n")
                time.sleep(args.interval)
                continue
            out.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "status": status,
                        "kid": headers.get("X-Keyroll-Kid"),
                        "version": headers.get("X-Keyroll-Version"),
                        "code": headers.get("X-Keyroll-Code"),
                        "pid": os.getpid(),
                    }
                )
                + "\n"
            )
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
