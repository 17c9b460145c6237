#!/usr/bin/env python3
"""A webhook receiver to try whatsd with: checks every request's
X-Whatsd-Signature with the README's `verify` function and prints one line
per event. Python 3.8+, standard library only.

    python3 examples/webhook_receiver.py --port 9000 --secret demo-webhook-secret-123

Answers 200 to a verified request, 401 to a forged or stale one (whatsd
then moves it to the dead letters). --save DIR keeps each verified request
(body and signature header) for inspection.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# The README's verification example, verbatim (tests/readme.rs checks).
def verify(secret: bytes, header: str, body: bytes, tolerance=300) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(","))
    t, sig = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)


def describe(event: dict) -> str:
    line = f"{event.get('type')} session={event.get('session')} id={event.get('id')}"
    data = event.get("data") or {}
    if str(event.get("type", "")).startswith("message."):
        sender = (data.get("sender") or {}).get("phone") or data.get("chat")
        line += f" from={sender} text={data.get('text')!r}"
    elif event.get("type") == "session.state":
        line += f" {data.get('from')} -> {data.get('to')}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"),
                        help="the endpoint's secret (or $WEBHOOK_SECRET)")
    parser.add_argument("--save", metavar="DIR", help="keep each verified request here")
    args = parser.parse_args()
    if not args.secret:
        parser.error("--secret (or $WEBHOOK_SECRET) is required")
    secret = args.secret.encode()
    if args.save:
        os.makedirs(args.save, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            header = self.headers.get("X-Whatsd-Signature", "")
            try:
                ok = verify(secret, header, body)
            except ValueError:  # a malformed header
                ok = False
            if not ok:
                print(f"refused: bad or stale signature on {self.path}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            event = json.loads(body)
            print("verified", describe(event), flush=True)
            if args.save:
                name = os.path.join(args.save, str(event.get("id")))
                with open(name + ".json", "wb") as f:
                    f.write(body)
                with open(name + ".sig", "w") as f:
                    f.write(header)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"receiving webhooks on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
