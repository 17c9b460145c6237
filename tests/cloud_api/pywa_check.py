"""pywa against a running whatsd (demo build), as a Cloud API app uses it.

Called by tests/cloud_api/run.sh with a paired session. Receiving: a
`cloud_api` webhook endpoint points at a receiver here that hands every
request to pywa's own webhook handling (signature check with the
endpoint's secret as app secret, then its handlers); a demo contact sends
the session a text and pywa's `on_message` handler must see exactly that
text, sender, message id and timestamp (the timestamp whatsd's own format
carries for the same message). Sending: pywa's `WhatsApp.send_message`
with its httpx client's base URL at whatsd's /graph, and `Message.reply`
(which pywa sends to the sender's business-scoped user id); the demo
contact must receive exactly those texts. Statuses: pywa's
`on_message_status` handler must see `sent` and `delivered` (the demo
contact's phone confirms delivery by itself) and, once the contact reads
it, `read`, for the message it sent, with the contact's phone and user id.
Media: a demo contact sends an image; pywa's handler sees Meta's image
object, and `get_media_url` + `download_media` save exactly its bytes;
pywa's `send_image` with bytes uploads them and sends by media id, and
fakewa decrypts exactly those bytes.
Bad requests raise pywa's own errors with whatsd's codes. The raw message
and status deliveries are saved for the Node check.
Exits non-zero on any mismatch.
"""

import argparse
import base64
import hashlib
import json
import pathlib
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from pywa import WhatsApp, errors, filters, types

TEXT = "héllo from a demo contact 😀 — ünïcode"
SENT_TEXT = "hello back from pywa ✓"
REPLY_TEXT = "a reply to your user id 👋"


def fail(why: str) -> None:
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def api(base: str, token: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait(what: str, secs: float, probe):
    deadline = time.monotonic() + secs
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            fail(f"{what}: not within {secs:.0f} s")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", required=True, help="the tenant's token")
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True, help="where the raw delivery is saved")
    args = ap.parse_args()
    out = pathlib.Path(args.out)

    status, demo = api(args.api, args.token, "GET", "/v1/demo")
    if status != 200:
        fail(f"GET /v1/demo: {status} {demo}")
    control, contact = demo["control_url"], demo["default_contact"]
    status, session = api(args.api, args.token, "GET", f"/v1/sessions/{args.session}")
    if status != 200 or session["state"] != "connected":
        fail(f"session {args.session} is not connected: {status} {session}")
    business_phone = session["phone"]

    # pywa for sending: our own httpx client, whose base URL we point at
    # whatsd after pywa set Meta's in its constructor.
    http = httpx.Client(timeout=30)
    wa = WhatsApp(
        phone_id=args.session,
        token=args.token,
        session=http,
        verify_token="unused-verify-token",
        app_secret=args.secret,
        validate_updates=True,
        api_version="23.0",
    )
    http.base_url = f"{args.api}/graph/v23.0"

    seen: list[types.Message] = []
    replies: list[str] = []

    @wa.on_message(filters.text)
    def on_text(client: WhatsApp, msg: types.Message) -> None:
        seen.append(msg)
        replies.append(msg.reply(REPLY_TEXT).id)

    images: list[types.Message] = []

    @wa.on_message(filters.image)
    def on_image(client: WhatsApp, msg: types.Message) -> None:
        images.append(msg)

    statuses: list[types.MessageStatus] = []

    @wa.on_message_status()
    def on_status(client: WhatsApp, status: types.MessageStatus) -> None:
        statuses.append(status)

    whatsd_events: list[dict] = []
    raw: list[tuple[bytes, str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/whatsd":
                whatsd_events.append(json.loads(body))
                answer, code = "ok", 200
            else:
                signature = self.headers.get("X-Hub-Signature-256", "")
                refused = wa.webhook_update_validator(body, signature)
                if refused:
                    answer, code = refused
                else:
                    raw.append((body, signature))
                    answer, code = wa.webhook_update_handler(body)
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(str(answer).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}"
    for name, spec in {
        "cloud": {"url": f"{hook}/cloud", "secret": args.secret, "format": "cloud_api"},
        "own": {"url": f"{hook}/whatsd", "secret": args.secret, "events": ["message.received"]},
    }.items():
        status, body = api(
            args.api, args.token, "PUT", f"/v1/tenants/{args.tenant}/webhooks/{name}", spec
        )
        if status not in (200, 201):
            fail(f"PUT webhook {name}: {status} {body}")

    # Receiving.
    before = int(time.time())
    status, sent = api(
        args.api, args.token, "POST", f"/v1/demo/sessions/{args.session}/messages", {"text": TEXT}
    )
    if status != 200:
        fail(f"demo message: {status} {sent}")
    message_id = sent["id"]
    wait("pywa's on_message handler", 30, lambda: seen)
    own = wait(
        "whatsd-format delivery",
        30,
        lambda: [e for e in whatsd_events if e["data"]["message_id"] == message_id],
    )[0]
    msg = seen[0]
    checks = {
        "text": (msg.text, TEXT),
        "from_user.wa_id": (msg.from_user.wa_id, contact),
        "id": (msg.id, message_id),
        "timestamp": (int(msg.timestamp.timestamp()), own["data"]["timestamp"]),
        "metadata.phone_number_id": (msg.metadata.phone_number_id, args.session),
        "metadata.display_phone_number": (msg.metadata.display_phone_number, business_phone),
    }
    for field, (got, want) in checks.items():
        if got != want:
            fail(f"pywa's Message.{field} is {got!r}, whatsd sent {want!r}")
    if not (before - 5 <= own["data"]["timestamp"] <= int(time.time()) + 5):
        fail(f"timestamp {own['data']['timestamp']} is not now ({before})")
    bsuid = msg.from_user.bsuid
    if not (bsuid.startswith("ZZ.") and len(bsuid) == 42 and contact not in bsuid):
        fail(f"from_user.bsuid {bsuid!r} is not whatsd's business-scoped user id")
    print(
        f"OK pywa on_message: text={msg.text!r} from={msg.from_user.wa_id} "
        f"bsuid={bsuid} id={msg.id} timestamp={msg.timestamp.isoformat()}"
    )
    body, signature = next((b, sig) for b, sig in raw if b'"messages"' in b)
    (out / "delivery.json").write_bytes(body)
    (out / "signature").write_text(signature)
    (out / "expected.json").write_text(
        json.dumps(
            {
                "text": TEXT,
                "from": contact,
                "user_id": bsuid,
                "id": message_id,
                "timestamp": str(own["data"]["timestamp"]),
                "phone_number_id": args.session,
                "secret": args.secret,
            }
        )
    )

    # Sending through /graph, by phone number and (the reply) by user id.
    sent = wa.send_message(to=contact, text=SENT_TEXT)

    def received(message_id: str):
        url = f"{control}/control/outbox?from_phone={business_phone}"
        with urllib.request.urlopen(url, timeout=10) as response:
            outbox = json.loads(response.read())["messages"]
        return [m for m in outbox if m["id"] == message_id]

    for what, message_id, text in [
        ("send_message", sent.id, SENT_TEXT),
        ("Message.reply (to the user id)", replies[0] if replies else None, REPLY_TEXT),
    ]:
        if not message_id:
            fail(f"{what} gave no message id")
        entry = wait(f"fakewa's contact receiving {what}", 15, lambda: received(message_id))[0]
        if entry["text"] != text or not entry["to"].startswith(contact):
            fail(f"{what}: the contact received {entry}, not {text!r} to {contact}")
        print(f"OK pywa {what}: id={message_id} received by {entry['to']}: {entry['text']!r}")

    # Statuses of what pywa sent: sent and delivered by themselves, read
    # once the contact reads it.
    def statuses_of(message_id: str) -> list[str]:
        return [str(s.status) for s in statuses if s.id == message_id]

    wait(
        "pywa's on_message_status handler: sent, delivered",
        30,
        lambda: statuses_of(sent.id) == ["sent", "delivered"],
    )
    read = urllib.request.Request(
        f"{control}/control/receipts",
        data=json.dumps(
            {"to_phone": business_phone, "from_phone": contact, "message_id": sent.id, "status": "read"}
        ).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(read, timeout=10) as response:
        if response.status != 200:
            fail(f"fakewa's read receipt: {response.status}")
    wait(
        "pywa's on_message_status handler: read",
        30,
        lambda: statuses_of(sent.id) == ["sent", "delivered", "read"],
    )
    for status in (s for s in statuses if s.id == sent.id):
        checks = {
            "from_user.wa_id": (status.from_user.wa_id, contact),
            "from_user.bsuid": (status.from_user.bsuid, bsuid),
            "metadata.phone_number_id": (status.metadata.phone_number_id, args.session),
        }
        for field, (got, want) in checks.items():
            if got != want:
                fail(f"pywa's MessageStatus({status.status}).{field} is {got!r}, not {want!r}")
        if not (before - 5 <= int(status.timestamp.timestamp()) <= int(time.time()) + 5):
            fail(f"status {status.status} timestamp {status.timestamp} is not now")
    print(f"OK pywa on_message_status: {' → '.join(statuses_of(sent.id))} for {sent.id} to {contact}")
    body, signature = next(
        (b, sig) for b, sig in raw if b'"statuses"' in b and b'"read"' in b and sent.id.encode() in b
    )
    (out / "status.json").write_bytes(body)
    (out / "status_signature").write_text(signature)
    expected = json.loads((out / "expected.json").read_text())
    expected["status_id"] = sent.id
    (out / "expected.json").write_text(json.dumps(expected))

    # Media: the demo contact sends an image through fakewa's media server;
    # pywa's on_message sees Meta's image object and downloads it with its
    # own two steps (get_media_url, then download_media with the token).
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF" + hashlib.sha256(b"whatsd").digest() * 4096
    media = urllib.request.Request(
        f"{control}/control/media",
        data=json.dumps(
            {
                "to_phone": business_phone,
                "from_phone": contact,
                "type": "image",
                "mimetype": "image/jpeg",
                "data_base64": base64.b64encode(jpeg).decode(),
                "caption": "a receipt 🧾",
            }
        ).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(media, timeout=30) as response:
        image_id = json.loads(response.read())["id"]
    image = wait("pywa's on_message handler (image)", 30, lambda: [m for m in images if m.id == image_id])[0]
    if image.image.mime_type != "image/jpeg" or image.caption != "a receipt 🧾":
        fail(f"pywa's image is {image.image!r} caption {image.caption!r}")
    url = wa.get_media_url(image.image.id)
    if url.file_size != len(jpeg) or url.sha256 != hashlib.sha256(jpeg).hexdigest():
        fail(f"get_media_url answered {url!r}")
    saved = wa.download_media(url=url.url, path=out)
    if saved.name != f"{image_id}.jpg":
        fail(f"download_media saved as {saved.name!r}, not {image_id}.jpg (Content-Disposition)")
    if saved.read_bytes() != jpeg:
        fail(f"download_media saved {saved.stat().st_size} bytes that differ from the {len(jpeg)} sent")
    print(f"OK pywa download_media: {len(jpeg)} bytes byte-exact as {saved.name} ({url.mime_type})")

    # Media out: pywa uploads bytes itself (POST /{phone_number_id}/media)
    # and sends the image by the id it got; fakewa decrypts what the linked
    # device uploaded and sent.
    picture = b"\xff\xd8\xff\xe0\x00\x10JFIF" + hashlib.sha256(b"pywa").digest() * 2048
    sent_image = wa.send_image(to=contact, image=picture, caption="from pywa 📷", mime_type="image/jpeg")

    def sent_bytes():
        try:
            with urllib.request.urlopen(f"{control}/control/media/sent/{sent_image.id}", timeout=10) as r:
                return r.read()
        except urllib.error.HTTPError:
            return None

    got = wait("the image pywa sent, at fakewa", 60, sent_bytes)
    if got != picture:
        fail(f"fakewa decrypted {len(got)} bytes that differ from the {len(picture)} pywa sent")
    print(f"OK pywa send_image (upload_media, then by id): {len(picture)} bytes byte-exact at fakewa")

    # Bad requests: pywa's own exceptions, with whatsd's codes.
    other_http = httpx.Client(timeout=30)
    unknown = WhatsApp(
        phone_id="no-such-session", token=args.token, session=other_http, api_version="23.0"
    )
    other_http.base_url = f"{args.api}/graph/v23.0"
    cases = [
        ("unknown phone_number_id", lambda: unknown.send_message(to=contact, text="x"), errors.WhatsAppError, 100),
        ("empty text body", lambda: wa.send_message(to=contact, text=""), errors.InvalidParameter, 131009),
        (
            "missing text body",
            lambda: wa.api.send_message(
                sender=args.session,
                to=contact,
                recipient=None,
                recipient_type="individual",
                typ="text",
                msg={},
            ),
            errors.MissingRequiredParameter,
            131008,
        ),
        ("bad recipient", lambda: wa.send_message(to="12", text="x"), errors.InvalidParameter, 131009),
        ("location", lambda: wa.send_location(to=contact, latitude=1.0, longitude=2.0), errors.UnsupportedMessageType, 131051),
        ("unknown media id", lambda: wa.send_image(to=contact, image="999999999"), errors.InvalidParameter, 131009),
    ]
    for what, call, kind, code in cases:
        try:
            call()
        except errors.WhatsAppError as e:
            if not isinstance(e, kind) or e.code != code:
                fail(f"{what}: pywa raised {type(e).__name__} code {e.code}, not {kind.__name__} {code}")
            print(f"OK pywa {what}: {type(e).__name__} code={e.code} subcode={e.subcode} {e.message!r}")
        else:
            fail(f"{what}: pywa raised nothing")
    server.shutdown()


if __name__ == "__main__":
    main()
