#!/usr/bin/env bash
# Cloud API apps against whatsd, with the real libraries (called by .ci/run):
# a demo daemon (`serve --demo`, its embedded fakewa) on a free loopback
# port with a temp data dir; a tenant, a session paired by the demo phone;
# then
#  - pywa (pinned in requirements.txt) receives a demo contact's message
#    through a `cloud_api` webhook endpoint with its own signature check and
#    handler, sends through /graph with `send_message` and `Message.reply`
#    (the contact must receive both texts), downloads a received image with
#    get_media_url + download_media (byte-exact), and gets its own exceptions for
#    bad requests (pywa_check.py);
#  - whatsapp-api-js (pinned in package-lock.json) parses the same delivery
#    with its own signature check and handler (node_check.mjs).
# The daemon is $WHATSD_BIN (a build with the `demo` feature), else this
# script builds one. Python's venv and the Node modules are kept in
# ${XDG_CACHE_HOME:-$HOME/.cache}/whatsd-cloud-api, keyed by the pins.
# Needs python3 (with venv), node and npm, curl; PyPI and npm reachable on
# the first run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/cloud_api"
t0=$SECONDS
steps=()
step() {
  steps+=("$(printf '%-28s %4ss' "$1" $((SECONDS - ${2:-$t0})))")
}

work=$(mktemp -d)
daemon=
cleanup() {
  if [[ -n $daemon ]]; then kill "$daemon" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/*.out "$work"/*.err; do
    [[ -s $f ]] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }
  done
  exit 1
}

# The daemon: a demo build (it must skip the certificate-chain check, or it
# cannot reach fakewa).
s=$SECONDS
bin=${WHATSD_BIN:-}
if [[ -z $bin ]]; then
  (cd "$root" && cargo build --locked -p whatsd --features demo --bin whatsd)
  target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target="$root/$target"
  bin="$target/debug/whatsd"
fi
[[ -x $bin ]] || fail "no whatsd binary at $bin"
if "$bin" build-info | grep -qx 'cert_chain_verification: enforced'; then
  fail "$bin is not a demo build (cargo build --features demo)"
fi
step "daemon binary" "$s"

# Python (pywa) and Node (whatsapp-api-js), installed once per set of pins.
s=$SECONDS
cache=${XDG_CACHE_HOME:-$HOME/.cache}/whatsd-cloud-api
mkdir -p "$cache"
venv="$cache/venv-$(sha256sum "$here/requirements.txt" | cut -c1-16)"
if [[ ! -x $venv/bin/python ]]; then
  fresh=$(mktemp -d "$cache/venv.XXXXXX")
  python3 -m venv "$fresh"
  "$fresh/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r "$here/requirements.txt"
  "$fresh/bin/python" -m pip check
  # Another run may have finished first: keep whichever landed.
  mv -T "$fresh" "$venv" 2>/dev/null || rm -rf "$fresh"
fi
python="$venv/bin/python"
"$python" -c 'import importlib.metadata as m; assert m.version("pywa") == "4.5.0"'
step "python venv (pywa)" "$s"

s=$SECONDS
node_dir="$cache/node-$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
if [[ ! -d $node_dir/node_modules/whatsapp-api-js ]]; then
  fresh=$(mktemp -d "$cache/node.XXXXXX")
  cp "$here/package.json" "$here/package-lock.json" "$fresh/"
  (cd "$fresh" && npm ci --no-audit --no-fund --loglevel=error)
  mv -T "$fresh" "$node_dir" 2>/dev/null || rm -rf "$fresh"
fi
cp "$here/node_check.mjs" "$work/"
ln -s "$node_dir/node_modules" "$work/node_modules"
step "node modules" "$s"

# A demo daemon on a free port, with a temp data dir and a known admin token.
s=$SECONDS
admin="cloud-api-admin-$(date +%s%N)"
# The daemon refuses WHATSD_* variables it does not know (WHATSD_BIN).
unset_whatsd=()
for name in $(compgen -e | grep '^WHATSD_' || true); do unset_whatsd+=(-u "$name"); done
(cd "$work" && exec env "${unset_whatsd[@]}" WHATSD_LISTEN=127.0.0.1:0 \
  WHATSD_DATA_DIR="$work/data" WHATSD_ADMIN_TOKEN="$admin" "$bin" serve --demo) \
  >"$work/daemon.out" 2>"$work/daemon.err" &
daemon=$!
deadline=$((SECONDS + 60))
until grep -q '^listening on ' "$work/daemon.out" 2>/dev/null; do
  kill -0 "$daemon" 2>/dev/null || fail "the daemon exited"
  ((SECONDS < deadline)) || fail "the daemon did not listen within 60 s"
  sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$work/daemon.out" | head -n 1)
api="http://$addr"
step "daemon start" "$s"

# A tenant, its session, paired by the demo phone.
s=$SECONDS
call() { # METHOD PATH TOKEN [BODY]
  local args=(-s --fail-with-body -X "$1" -H "Authorization: Bearer $3")
  [[ $# -ge 4 ]] && args+=(-H 'Content-Type: application/json' -d "$4")
  curl "${args[@]}" "$api$2" || fail "$1 $2"
}
token=$(call POST /v1/tenants "$admin" '{"id":"acme"}' |
  "$python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
call POST /v1/sessions "$token" '{"id":"shop-1","tenant":"acme"}' >/dev/null
scan=$(call POST /v1/demo/sessions/shop-1/scan "$token")
[[ $scan == *'"state":"connected"'* ]] || fail "the demo scan answered $scan"
step "tenant, session, pairing" "$s"

s=$SECONDS
echo "==> pywa $("$python" -c 'import pywa; print(pywa.__version__)')"
"$python" "$here/pywa_check.py" --api "$api" --token "$token" --tenant acme \
  --session shop-1 --secret "cloud-api-secret-0123456789" --out "$work" ||
  fail "pywa"
step "pywa: receive, send, errors" "$s"

s=$SECONDS
echo "==> whatsapp-api-js $(cd "$work" && node -p 'require("./node_modules/whatsapp-api-js/package.json").version')"
(cd "$work" && node node_check.mjs "$work") || fail "whatsapp-api-js"
step "whatsapp-api-js: message, status" "$s"

kill -TERM "$daemon"
wait "$daemon" || fail "the daemon did not stop cleanly"
daemon=
step "total"
echo "OK: pywa and whatsapp-api-js work against whatsd unchanged but for base URL and token"
printf '  %s\n' "${steps[@]}"
