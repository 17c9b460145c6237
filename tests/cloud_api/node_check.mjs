// whatsapp-api-js (a maintained Node library for Meta's WhatsApp Cloud API)
// parses the deliveries pywa_check.py saved, as an app built on it would:
// `WhatsAppAPI.post(body, rawBody, signature)` checks X-Hub-Signature-256
// with the endpoint's secret as app secret, then calls `on.message` (or
// `on.status`); its fields must be exactly what whatsd sent. Usage: node
// node_check.mjs DIR (DIR holds delivery.json, signature, status.json,
// status_signature and expected.json).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { WhatsAppAPI } from "whatsapp-api-js";

const dir = process.argv[2];
const raw = readFileSync(join(dir, "delivery.json"), "utf8");
const signature = readFileSync(join(dir, "signature"), "utf8").trim();
const want = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));

function fail(why) {
  console.error(`FAIL: ${why}`);
  process.exit(1);
}

const Whatsapp = new WhatsAppAPI({
  token: "unused",
  appSecret: want.secret,
  webhookVerifyToken: "unused",
  v: "v23.0",
});

let seen = null;
Whatsapp.on.message = (args) => {
  seen = args;
};

// A wrong signature must be refused by the library itself.
try {
  await Whatsapp.post(JSON.parse(raw), raw, "sha256=" + "0".repeat(64));
  fail("whatsapp-api-js accepted a wrong signature");
} catch (e) {
  if (seen) fail("the handler ran for a wrong signature");
}

await Whatsapp.post(JSON.parse(raw), raw, signature);
if (!seen) fail("whatsapp-api-js did not call on.message");

const checks = {
  "message.text.body": [seen.message.text?.body, want.text],
  "message.type": [seen.message.type, "text"],
  "message.id": [seen.message.id, want.id],
  "message.timestamp": [seen.message.timestamp, want.timestamp],
  "recipient.phone": [seen.recipient.phone, want.from],
  "recipient.bsuid": [seen.recipient.bsuid, want.user_id],
  "contact.wa_id": [seen.contact.wa_id, want.from],
  "contact.user_id": [seen.contact.user_id, want.user_id],
  phoneID: [seen.phoneID, want.phone_number_id],
};
for (const [field, [got, expected]] of Object.entries(checks)) {
  if (got !== expected) fail(`${field} is ${JSON.stringify(got)}, whatsd sent ${JSON.stringify(expected)}`);
}
console.log(
  `OK whatsapp-api-js on.message: text=${JSON.stringify(seen.message.text.body)} ` +
    `from=${seen.recipient.phone} bsuid=${seen.recipient.bsuid} id=${seen.message.id} ` +
    `timestamp=${seen.message.timestamp}`,
);

// A status (the contact read what pywa sent).
const statusRaw = readFileSync(join(dir, "status.json"), "utf8");
const statusSignature = readFileSync(join(dir, "status_signature"), "utf8").trim();
let status = null;
Whatsapp.on.status = (args) => {
  status = args;
};
await Whatsapp.post(JSON.parse(statusRaw), statusRaw, statusSignature);
if (!status) fail("whatsapp-api-js did not call on.status");
const statusChecks = {
  status: [status.status, "read"],
  id: [status.id, want.status_id],
  type: [status.type, "individual"],
  "recipient.phone": [status.recipient.phone, want.from],
  "recipient.bsuid": [status.recipient.bsuid, want.user_id],
  "contact.wa_id": [status.contact.wa_id, want.from],
  "contact.user_id": [status.contact.user_id, want.user_id],
  phoneID: [status.phoneID, want.phone_number_id],
};
for (const [field, [got, expected]] of Object.entries(statusChecks)) {
  if (got !== expected) fail(`status ${field} is ${JSON.stringify(got)}, whatsd sent ${JSON.stringify(expected)}`);
}
console.log(
  `OK whatsapp-api-js on.status: ${status.status} id=${status.id} to=${status.recipient.phone} ` +
    `bsuid=${status.recipient.bsuid}`,
);
