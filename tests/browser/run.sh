#!/usr/bin/env bash
# The admin page in a real browser: builds the daemon with the test-only
# `demo` feature (so it accepts fakewa's unsigned certificate chain) and
# fakewa, then drives Chromium through admin.mjs (playwright-core).
# Screenshots land in target/browser-screenshots/.
#
# Needs Node and Chromium at /usr/bin/chromium (or $CHROMIUM); `.ci/run`
# installs Chromium. Not part of `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
  echo "no Chromium at $chromium (Debian: apt-get install chromium; or set CHROMIUM)" >&2
  exit 1
fi

# Private copies: the test restarts the daemon, and another cargo run in
# this tree may rebuild target/debug/whatsd without the demo feature
# meanwhile. The copy must skip the chain check, or it cannot reach fakewa.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
cargo build --locked -p fakewa
cp target/debug/fakewa "$bin/"
for attempt in 1 2 3; do
  cargo build --locked -p whatsd --features demo --bin whatsd
  cp target/debug/whatsd "$bin/"
  if ! "$bin/whatsd" build-info | grep -qx 'cert_chain_verification: enforced'; then
    break
  fi
  if [[ $attempt == 3 ]]; then
    echo "target/debug/whatsd keeps verifying the certificate chain (rebuilt without --features demo meanwhile?)" >&2
    exit 1
  fi
done

cd tests/browser
if [[ ! -d node_modules/playwright-core ]]; then
  npm ci --no-audit --no-fund
fi
WHATSD_BIN="$bin/whatsd" FAKEWA_BIN="$bin/fakewa" CHROMIUM="$chromium" \
  SCREENSHOTS="$root/target/browser-screenshots" node admin.mjs
