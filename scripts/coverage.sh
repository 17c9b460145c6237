#!/usr/bin/env bash
# Line coverage of src/ over the whole test suite: `cargo test --workspace
# --locked` (the README's test command; extra arguments are appended) with
# the workspace's own crates compiled with `-C instrument-coverage`. The
# binary-level tests' `whatsd` daemons are instrumented too (they are the
# whatsd bin of the same build) and write their own profiles; a daemon killed
# with SIGKILL writes none, and a profile cut short is skipped with a warning.
# Prints line coverage per module of src/ and the total, and fails when the
# total is below COVERAGE_MIN percent (default 80). Called by .ci/run.
#
# Only the workspace crates are instrumented (RUSTC_WORKSPACE_WRAPPER, see
# scripts/coverage-rustc.sh): the dependencies are the artifacts of a plain
# build, and the instrumented workspace crates get file names of their own, so
# a plain `cargo test` afterwards compiles nothing again.
#
# Needs llvm-profdata and llvm-cov of rustc's LLVM major version: rustup's
# llvm-tools component or Debian's llvm-N, installed here when neither is
# (or LLVM_PROFDATA / LLVM_COV). Output: $COVERAGE_DIR (default
# <target dir>/coverage): profiles/, merged.profdata, summary.json,
# files.txt (every file of src/, least covered first) and, with
# COVERAGE_HTML=1, html/ (every line of src/ with its count).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
min=${COVERAGE_MIN:-80}

# Tools of the LLVM that rustc uses: a profile written by LLVM N is refused
# by the tools of an older LLVM.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
host=$(rustc -vV | sed -n 's/^host: //p')
sysroot=$(rustc --print sysroot)
find_tool() {
  local name=$1 candidate
  for candidate in "$sysroot/lib/rustlib/$host/bin/$name" \
    "$(command -v "$name-$llvm_major" || true)" \
    "/usr/lib/llvm-$llvm_major/bin/$name"; do
    if [[ -x $candidate ]] && "$candidate" --version 2>/dev/null | grep -q "LLVM version $llvm_major\."; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
profdata=${LLVM_PROFDATA:-$(find_tool llvm-profdata || true)}
llvm_cov=${LLVM_COV:-$(find_tool llvm-cov || true)}
if [[ -z $profdata || -z $llvm_cov ]]; then
  # rustup's component is rustc's own LLVM (7 s here); Debian's llvm-N
  # (116 MB) where rustup cannot fetch it.
  if ! { command -v rustup >/dev/null && rustup component add llvm-tools; }; then
    echo "coverage: installing Debian's llvm-$llvm_major"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "llvm-$llvm_major"; then
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y "llvm-$llvm_major"
    fi
  fi
  profdata=$(find_tool llvm-profdata) && llvm_cov=$(find_tool llvm-cov) || {
    echo "coverage: no llvm-profdata/llvm-cov of LLVM $llvm_major" >&2
    exit 1
  }
fi
echo "coverage: $profdata, $llvm_cov (LLVM $llvm_major)"

target=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out=${COVERAGE_DIR:-$target/coverage}
rm -rf "$out/profiles"
mkdir -p "$out/profiles"

# Passed per command, never exported: later cargo commands (.ci/run's) must
# build and run the plain artifacts. One profile per process (%p), merged
# online should a pid come round again for the same binary (%m); %c keeps
# the counters in the file while the process runs (continuous mode; see
# scripts/coverage-rustc.sh), so SIGKILL loses nothing.
coverage_env=(
  RUSTC_WORKSPACE_WRAPPER="$root/scripts/coverage-rustc.sh"
  LLVM_PROFILE_FILE="$out/profiles/%c%p-%m.profraw"
)
env "${coverage_env[@]}" cargo test --workspace --locked "$@"

# The instrumented executables of whatsd (test binaries and the daemon), as
# the build that just ran reports them (fresh: nothing is compiled again).
mapfile -t objects < <(
  env "${coverage_env[@]}" cargo test --workspace --locked --no-run --message-format=json "$@" 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if msg["target"]["name"] == "fakewa" or "/tests/fakewa#" in msg["package_id"]:
        continue
    if msg["profile"]["test"] or "bin" in msg["target"]["kind"]:
        print(msg["executable"])
' | sort -u
)
((${#objects[@]} > 0)) || { echo "coverage: no instrumented executables found" >&2; exit 1; }

# Profiles of killed processes are absent; one cut short mid-write (a kill
# during exit) is empty or truncated: skipped, with the reason printed.
find "$out/profiles" -name '*.profraw' -size 0 -delete
find "$out/profiles" -name '*.profraw' >"$out/profiles.txt"
count=$(wc -l <"$out/profiles.txt")
((count > 0)) || { echo "coverage: the tests wrote no profile" >&2; exit 1; }
"$profdata" merge -sparse --failure-mode=all --input-files="$out/profiles.txt" \
  -o "$out/merged.profdata" 2>"$out/merge.log" || { cat "$out/merge.log" >&2; exit 1; }
skipped=$(grep -c 'warning:' "$out/merge.log" || true)
echo "coverage: merged $((count - skipped)) profiles (${skipped} unreadable, skipped) of ${#objects[@]} executables"
((skipped == 0)) || head -5 "$out/merge.log"

object_args=("${objects[0]}")
for object in "${objects[@]:1}"; do
  object_args+=(-object "$object")
done
"$llvm_cov" export -summary-only -instr-profile="$out/merged.profdata" "${object_args[@]}" >"$out/summary.json"
if [[ -n ${COVERAGE_HTML:-} ]]; then
  rm -rf "$out/html"
  "$llvm_cov" show -format=html -output-dir="$out/html" -instr-profile="$out/merged.profdata" \
    "${object_args[@]}" "$root/src"
  echo "coverage: line by line in $out/html/index.html"
fi

# Per module: src/NAME.rs and src/NAME/** are module NAME. Everything outside
# src/ (tests/, fakewa, generated code, dependencies) is left out; nothing in
# src/ is.
python3 - "$root/src/" "$out/summary.json" "$out/files.txt" "$min" <<'EOF'
import json, sys
src, summary, files_out, minimum = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
files = {}
for data in json.load(open(summary))["data"]:
    for f in data["files"]:
        if f["filename"].startswith(src):
            lines = f["summary"]["lines"]
            files[f["filename"][len(src):]] = (lines["covered"], lines["count"])
modules = {}
for name, (covered, count) in files.items():
    module = name.split("/")[0].removesuffix(".rs")
    c, n = modules.get(module, (0, 0))
    modules[module] = (c + covered, n + count)
pct = lambda c, n: 100.0 * c / n if n else 100.0
with open(files_out, "w") as out:
    out.write(f"{'file (src/)':<40} {'lines':>7} {'missed':>7} {'cover':>7}\n")
    for name, (c, n) in sorted(files.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        out.write(f"{name:<40} {n:>7} {n - c:>7} {pct(c, n):>6.1f}%\n")
print(f"\n{'module (src/)':<16} {'lines':>7} {'missed':>7} {'cover':>7}")
for module, (c, n) in sorted(modules.items()):
    print(f"{module:<16} {n:>7} {n - c:>7} {pct(c, n):>6.1f}%")
total_c = sum(c for c, _ in files.values())
total_n = sum(n for _, n in files.values())
total = pct(total_c, total_n)
print(f"{'TOTAL':<16} {total_n:>7} {total_n - total_c:>7} {total:>6.1f}%")
print(f"per file: {files_out}")
if not files:
    sys.exit("coverage: no file of src/ in the report")
if total < minimum:
    sys.exit(f"FAIL: line coverage of src/ is {total:.1f} %, below {minimum:g} %")
print(f"OK: line coverage of src/ is {total:.1f} % (at least {minimum:g} %)")
EOF
