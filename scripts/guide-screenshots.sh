#!/usr/bin/env bash
# Regenerates the admin-page screenshots of docs/USER_GUIDE.md: runs the
# browser test (tests/browser/run.sh: a demo daemon driven by Chromium)
# with its screenshots going to a temp dir, and copies the ones the guide
# shows into docs/images/ under stable names. Commit the result;
# scripts/check-guide-images.sh checks it in CI.
#
# Needs what tests/browser/run.sh needs (Node, Chromium, `npm ci` in
# tests/browser). WHATSD_BIN, when set, is the demo build to use; otherwise
# run.sh builds one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shots=$(mktemp -d)
trap 'rm -rf "$shots"' EXIT

SCREENSHOTS="$shots" "$root/tests/browser/run.sh"

# browser test's name -> the guide's name
declare -A guide_names=(
  [01-sign-in]=admin-sign-in
  [02-qr]=admin-pairing-qr
  [02-qr-phone]=admin-pairing-qr-phone
  [03-connected]=admin-connected
  [03b-limits]=admin-rate-limits
  [04-reset-confirm]=admin-reset-confirm
  [05c-demo-message]=admin-demo-message
  [05d-groups-contacts]=admin-groups-contacts
  [05e-recent-messages]=admin-recent-messages
  [06-reconnecting]=admin-reconnecting
)
mkdir -p "$root/docs/images"
for shot in "${!guide_names[@]}"; do
  src="$shots/$shot.png"
  [[ -f $src ]] || { echo "the browser test took no $shot.png" >&2; exit 1; }
  cp "$src" "$root/docs/images/${guide_names[$shot]}.png"
done
ls -l "$root/docs/images"
"$root/scripts/check-guide-images.sh"
