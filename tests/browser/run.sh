#!/usr/bin/env bash
# The admin page in a real browser: builds the daemon with the test-only
# `demo` feature (so it accepts fakewa's unsigned certificate chain, and
# embeds fakewa), then drives Chromium through admin.mjs (playwright-core).
# Screenshots land in target/browser-screenshots/ (or $SCREENSHOTS).
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

# A private copy: the test restarts the daemon, and another cargo run in
# this tree may rebuild the binary without the demo feature meanwhile. The
# copy must skip the chain check, or it cannot reach the embedded fakewa.
# $WHATSD_BIN, when set (CI), is a demo build to use as it is.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
target=${CARGO_TARGET_DIR:-$root/target}
for attempt in 1 2 3; do
  if [[ -n ${WHATSD_BIN:-} ]]; then
    cp "$WHATSD_BIN" "$bin/whatsd"
  else
    cargo build --locked -p whatsd --features demo --bin whatsd
    cp "$target/debug/whatsd" "$bin/"
  fi
  if ! "$bin/whatsd" build-info | grep -qx 'cert_chain_verification: enforced'; then
    break
  fi
  if [[ -n ${WHATSD_BIN:-} || $attempt == 3 ]]; then
    echo "${WHATSD_BIN:-$target/debug/whatsd} verifies the certificate chain: not a demo build" >&2
    exit 1
  fi
done

cd tests/browser
if [[ ! -d node_modules/playwright-core ]]; then
  npm ci --no-audit --no-fund
fi
WHATSD_BIN="$bin/whatsd" CHROMIUM="$chromium" \
  SCREENSHOTS="${SCREENSHOTS:-$target/browser-screenshots}" node admin.mjs
