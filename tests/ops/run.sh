#!/usr/bin/env bash
# The monitoring artifacts in ops/ against promtool and a real daemon
# (called by .ci/run):
#  1. `promtool check rules` on ops/prometheus/alerts.yml;
#  2. `promtool test rules` on ops/prometheus/alerts_test.yml (every alert
#     fires where it should, with its labels and annotations, and not
#     elsewhere);
#  3. every PromQL `expr` of ops/grafana/whatsd.json, with Grafana's
#     variables replaced, as recording rules through `promtool check rules`,
#     so a broken panel query fails; no hard-coded datasource uid; every
#     runbook link names a section of docs/TROUBLESHOOTING.md;
#  4. a demo daemon (`serve --demo`) on a free loopback port with a temp
#     data dir pairs a session with the demo phone and receives a message;
#     its /metrics goes through `promtool check metrics`, and every metric
#     the dashboard or the rules name must be in it.
# The daemon is $WHATSD_BIN (a build with the `demo` feature), else this
# script builds one. promtool comes from Debian's `prometheus` package,
# installed when missing (with sudo unless root).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rules="$root/ops/prometheus/alerts.yml"
rules_test="$root/ops/prometheus/alerts_test.yml"
dashboard="$root/ops/grafana/whatsd.json"
runbook="$root/docs/TROUBLESHOOTING.md"
t0=$SECONDS
steps=()
step() {
  steps+=("$(printf '%-44s %4ss' "$1" $((SECONDS - ${2:-$t0})))")
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

# promtool (Debian 12 ships 2.42): only the binary, unpacked from Debian's
# `prometheus` package into a cache. Installing the package would pull in
# its web assets and, on a host running systemd, start a Prometheus server.
s=$SECONDS
if ! command -v promtool >/dev/null; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/whatsd-ops
  if [[ ! -x $cache/promtool ]]; then
    mkdir -p "$cache"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
      sudo=()
      [[ $(id -u) == 0 ]] || sudo=(sudo)
      "${sudo[@]}" apt-get update -qq
      (cd "$work" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/prometheus-deb"
    install -m 0755 "$work/prometheus-deb/usr/bin/promtool" "$cache/promtool.new"
    mv -f "$cache/promtool.new" "$cache/promtool"
  fi
  PATH=$cache:$PATH
fi
promtool --version 2>&1 | sed -n 1p
step "promtool" "$s"

s=$SECONDS
promtool check rules "$rules" || fail "promtool check rules $rules"
alerts=$(grep -c '^ *- alert: ' "$rules")
step "check rules: $alerts alerts" "$s"

s=$SECONDS
promtool test rules "$rules_test" || fail "promtool test rules $rules_test"
cases=$(grep -c '^ *- eval_time: ' "$rules_test")
step "test rules: $cases evaluations" "$s"

# The dashboard's queries as recording rules; the metric names it and the
# alert rules use, one per line, into $work/used.
s=$SECONDS
python3 - "$dashboard" "$rules" "$work/dashboard_rules.yml" "$work/used" "$runbook" <<'EOF'
import json, re, sys

dashboard_path, rules_path, out_rules, out_used, runbook_path = sys.argv[1:]
dashboard = json.load(open(dashboard_path))

# Metric names: whatsd's own and the process_ ones it exports. `up` is
# Prometheus' own and is not looked for in the scrape.
NAME = re.compile(r"(?<![\w:])((?:whatsd|process)_[A-Za-z0-9_]+)")
# Grafana's built-in intervals become fixed ones, template variables a
# match-anything regex (they only appear in =~ matchers).
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr):
    return VAR.sub(lambda m: BUILTINS.get(m.group(1) or m.group(2), ".*"), expr)


exprs, used, uids = [], set(), set()


def walk(node, panel):
    if isinstance(node, dict):
        if node.get("type") == "row" or "gridPos" in node:
            panel = node.get("id", panel)
        if isinstance(node.get("datasource"), dict):
            uids.add(node["datasource"].get("uid"))
        if isinstance(node.get("expr"), str):
            exprs.append((panel, node.get("refId", "A"), node["expr"]))
        for key, value in node.items():
            if key == "definition" and isinstance(value, str):
                used.update(NAME.findall(value))
            walk(value, panel)
    elif isinstance(node, list):
        for item in node:
            walk(item, panel)


walk(dashboard, None)
if not exprs:
    sys.exit("no expr in the dashboard")
bad_uids = uids - {"${DS_PROMETHEUS}", "-- Grafana --"}
if bad_uids:
    sys.exit(f"hard-coded datasource uids in the dashboard: {sorted(bad_uids)}")
with open(out_rules, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for panel, ref, expr in exprs:
        used.update(NAME.findall(expr))
        f.write(f"      - record: dashboard:panel_{panel}:{ref}\n")
        f.write(f"        expr: {json.dumps(substitute(expr))}\n")
for line in open(rules_path):
    if not line.lstrip().startswith("#"):
        used.update(NAME.findall(line))
with open(out_used, "w") as f:
    f.write("".join(f"{name}\n" for name in sorted(used)))
print(f"dashboard: {len(exprs)} queries; dashboard and rules name {len(used)} metrics")

# The runbook links (the rules' and the guide's own) must name a section of
# the guide, with GitHub's heading anchors.
def slug(heading):
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")


guide = open(runbook_path).read()
anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", guide, re.M)}
links = set(re.findall(r"TROUBLESHOOTING\.md#([\w-]+)", open(rules_path).read()))
links |= set(re.findall(r"\]\(#([\w-]+)\)", guide))
broken = sorted(links - anchors)
if broken:
    sys.exit(f"runbook links to missing sections of {runbook_path}: {broken}")
print(f"runbook: {len(links)} links, all to sections of docs/TROUBLESHOOTING.md")
EOF
queries=$(grep -c '^      - record: ' "$work/dashboard_rules.yml")
promtool check rules "$work/dashboard_rules.yml" >"$work/dashboard_check.out" ||
  fail "a dashboard query does not parse (rules file with the queries: see above)"
step "dashboard queries parse: $queries; runbook links" "$s"

# The daemon: a demo build (it pairs with its embedded fake WhatsApp).
s=$SECONDS
bin=${WHATSD_BIN:-}
if [[ -z $bin ]]; then
  (cd "$root" && cargo build --locked -p whatsd --features demo --bin whatsd)
  target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target="$root/$target"
  bin="$target/debug/whatsd"
fi
[[ $bin == /* ]] || bin="$PWD/$bin" # the daemon runs in $work
[[ -x $bin ]] || fail "no whatsd binary at $bin"
if "$bin" build-info | grep -qx 'cert_chain_verification: enforced'; then
  fail "$bin is not a demo build (cargo build --features demo)"
fi
step "daemon binary" "$s"

s=$SECONDS
admin="ops-admin-$(date +%s%N)"
# The daemon refuses WHATSD_* variables it does not know (WHATSD_BIN).
unset_whatsd=()
for name in $(compgen -e | grep '^WHATSD_' || true); do unset_whatsd+=(-u "$name"); done
(cd "$work" && exec env "${unset_whatsd[@]}" WHATSD_LISTEN=127.0.0.1:0 \
  WHATSD_DATA_DIR="$work/data" WHATSD_ADMIN_TOKEN="$admin" WHATSD_LOG_FILTER=warn \
  "$bin" serve --demo) >"$work/daemon.out" 2>"$work/daemon.err" &
daemon=$!
deadline=$((SECONDS + 60))
until grep -q '^listening on ' "$work/daemon.out" 2>/dev/null; do
  kill -0 "$daemon" 2>/dev/null || fail "the daemon exited"
  ((SECONDS < deadline)) || fail "the daemon did not listen within 60 s"
  sleep 0.1
done
api="http://$(sed -n 's/^listening on //p' "$work/daemon.out" | head -n 1)"
step "daemon start" "$s"

# Something for the counters and histograms to count: a pairing, a message.
s=$SECONDS
call() { # METHOD PATH [BODY]
  local args=(-sS --fail-with-body -X "$1" -H "Authorization: Bearer $admin")
  [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' -d "$3")
  curl "${args[@]}" "$api$2" || fail "$1 $2"
}
call POST /v1/sessions '{"id":"ops-1"}' >/dev/null
scan=$(call POST /v1/demo/sessions/ops-1/scan)
[[ $scan == *'"state":"connected"'* ]] || fail "the demo scan answered $scan"
call POST /v1/demo/sessions/ops-1/messages '{"text":"hello from tests/ops"}' >/dev/null
scrape="$work/metrics.txt"
deadline=$((SECONDS + 30))
until call GET /metrics >"$scrape" && grep -qx 'whatsd_messages_received_total 1' "$scrape"; do
  ((SECONDS < deadline)) || fail "/metrics did not count the demo message within 30 s"
  sleep 0.2
done
grep -qx 'whatsd_sessions{state="connected"} 1' "$scrape" ||
  fail "/metrics does not show the paired session as connected"
grep -Eq '^whatsd_store_flush_duration_seconds_count [1-9]' "$scrape" ||
  fail "/metrics counted no store flush"
step "pair, receive, scrape" "$s"

# The exposition as promtool reads it. Errors (it cannot parse) fail; lint
# findings are printed and fail too: whatsd's names follow the conventions,
# so a finding is a regression.
s=$SECONDS
lint_status=0
promtool check metrics <"$scrape" >"$work/lint.out" 2>&1 || lint_status=$?
cat "$work/lint.out"
((lint_status == 0)) || fail "promtool check metrics (status $lint_status)"
families=$(grep -c '^# TYPE ' "$scrape")
samples=$(grep -vc '^#' "$scrape")
step "check metrics: $families families, $samples samples" "$s"

# Every name the dashboard and the rules use must be in the scrape: a
# sample name (histograms' _bucket/_sum/_count included) or a family.
s=$SECONDS
missing=()
while read -r name; do
  grep -Eq "^${name}(\{| )" "$scrape" || grep -q "^# TYPE ${name} " "$scrape" ||
    missing+=("$name")
done <"$work/used"
if ((${#missing[@]})); then
  fail "used in ops/ but not in the daemon's /metrics: ${missing[*]}"
fi
step "metric names: $(wc -l <"$work/used") used, all exported" "$s"

kill -TERM "$daemon"
wait "$daemon" || fail "the daemon did not stop cleanly"
daemon=
step "total"
echo "OK: alert rules, their unit tests and the dashboard's queries check; every metric they use is exported"
printf '  %s\n' "${steps[@]}"
