#!/usr/bin/env bash
# The README's commands, run as written (called by .ci/run):
#  1. "The two commands": `cargo run --release -- serve` starts, answers
#     /readyz and the admin page, and stops cleanly on SIGTERM.
#  2. The five-minute walkthrough: its five sh blocks, in order: the daemon
#     (demo build) and the receiver in the background, blocks 3–5 in one
#     shell with WHATSD_TOKEN taken from what the daemon printed; then the
#     receiver must have verified session.connected and the message, and
#     after Ctrl-C (SIGINT) and the same start command the session is
#     connected again without a new QR.
# Needs ports 8080 and 9000 free, curl and python3. On a machine where
# ./sessions or ./sessions-demo already exist (a developer's checkout), the
# daemons get a temporary data dir through WHATSD_DATA_DIR so those stay
# untouched; on CI's clean checkout the commands run exactly as written.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
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

for port in 8080 9000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is taken; the README's commands need it"
  fi
done
if [[ -e sessions || -e sessions-demo ]]; then
  export WHATSD_DATA_DIR="$work/sessions"
  echo "note: ./sessions exists here; the daemons use $WHATSD_DATA_DIR"
fi

# Waits up to $2 seconds for file $1 to contain the fixed string $3.
wait_for() {
  local file=$1 secs=$2 needle=$3 deadline=$((SECONDS + $2))
  until grep -qF -- "$needle" "$file" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "no \"$needle\" in $file within ${secs}s"
    sleep 0.2
  done
}

# Starts the one-line command in FILE in the background, stdout and stderr
# in $work/NAME.*, and sets $started to its pid: bash execs the command and
# `cargo run` execs the binary, so that is the daemon's (or receiver's) pid.
start() {
  local name=$1 cmd
  cmd=$(<"$2")
  [[ $cmd != *$'\n'* ]] || fail "$2 is not a single command: $cmd"
  bash -c "exec $cmd" >"$work/$name.out" 2>"$work/$name.err" &
  started=$!
  pids+=("$started")
}

# Stops $1 with signal $2 and requires a clean exit within 60 s.
stop() {
  local pid=$1 signal=$2 status=0
  kill "-$signal" "$pid"
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null && fail "pid $pid still running 60 s after SIG$signal"
  wait "$pid" || status=$?
  ((status == 0)) || fail "exit status $status after SIG$signal"
}

echo "==> README: the two commands (cargo run --release -- serve)"
serve_cmd=$(sed -n 's/^\(cargo run --release -- serve\)  *#.*/\1/p' README.md | head -n 1)
[[ $serve_cmd == "cargo run --release -- serve" ]] || fail "the README's daemon command changed: '$serve_cmd'"
echo "$serve_cmd" >"$work/serve.sh"
start serve "$work/serve.sh"
pid=$started
wait_for "$work/serve.out" 1800 "listening on 127.0.0.1:8080"
curl -s --fail-with-body http://127.0.0.1:8080/readyz >/dev/null || fail "/readyz"
curl -s --fail-with-body -o /dev/null http://127.0.0.1:8080/ || fail "the admin page"
stop "$pid" TERM
echo "OK: serve started, was ready, stopped cleanly"

echo "==> README: the five-minute walkthrough"
python3 - README.md "$work" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
start = text.index("<!-- walkthrough")
end = text.index("<!-- /walkthrough -->")
blocks = re.findall(r"```sh\n(.*?)```", text[start:end], re.S)
if len(blocks) != 5:
    sys.exit(f"the walkthrough has {len(blocks)} sh blocks, this script runs 5")
for i, block in enumerate(blocks, 1):
    open(f"{sys.argv[2]}/block{i}.sh", "w").write(block)
EOF

start daemon "$work/block1.sh"
daemon=$started
wait_for "$work/daemon.out" 1800 "listening on 127.0.0.1:8080"
token=$(sed -n 's/^admin token (shown once; only its hash is kept): //p' "$work/daemon.out")
[[ -n $token ]] || fail "the daemon printed no admin token on its first start"
start receiver "$work/block2.sh"
wait_for "$work/receiver.out" 30 "receiving webhooks on http://127.0.0.1:9000/"

cat "$work/block3.sh" "$work/block4.sh" "$work/block5.sh" >"$work/steps.sh"
WHATSD_TOKEN=$token bash -euo pipefail "$work/steps.sh" >"$work/steps.out" 2>"$work/steps.err" ||
  fail "steps 3-5 failed"
grep -q '"state":"connected"' "$work/steps.out" || fail "the scan did not answer connected"
wait_for "$work/receiver.out" 30 "verified session.connected session=shop-1"
wait_for "$work/receiver.out" 30 "from=15557654321 text='hello from the demo'"
grep -q '^refused' "$work/receiver.out" && fail "the receiver refused a signature"

stop "$daemon" INT
start daemon "$work/block1.sh"
daemon=$started
wait_for "$work/daemon.out" 300 "listening on 127.0.0.1:8080"
deadline=$((SECONDS + 60))
until curl -s -H "Authorization: Bearer $token" http://127.0.0.1:8080/v1/sessions/shop-1 |
  grep -q '"state":"connected"'; do
  ((SECONDS < deadline)) || fail "shop-1 not connected again within 60 s of the restart"
  sleep 0.2
done
stop "$daemon" TERM
echo "OK: the walkthrough ran as written: paired, webhook verified, reconnected after a restart"
cat "$work/receiver.out"
