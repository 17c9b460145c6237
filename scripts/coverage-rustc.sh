#!/usr/bin/env bash
# RUSTC_WORKSPACE_WRAPPER of scripts/coverage.sh: cargo calls it as
# `coverage-rustc.sh RUSTC ARGS...` for the workspace's own crates only, so
# the dependencies keep the artifacts of a plain build. Instruments whatsd;
# build scripts (they would write profiles at build time) and fakewa (not
# measured) are compiled as they are, only under file names of their own.
#
# Counter relocation lets the profile runtime keep the counters in the
# profile file itself (continuous mode, `%c` in LLVM_PROFILE_FILE): a daemon
# the tests end with SIGKILL, as most of them do, leaves its profile too.
#
# With CLIPPY_ARGS set (clippy's own variable: lint flags joined by
# `__CLIPPY_HACKERY__`), the workspace's crates are compiled by clippy-driver,
# as `cargo clippy` does, but to full artifacts: the same build lints and
# produces the test executables, so CI needs no separate check build of every
# dependency (.ci/run).
rustc=$1
shift
driver=("$rustc")
[ -n "${CLIPPY_ARGS:-}" ] && driver=(clippy-driver "$rustc")
case " $* " in
*" --crate-name build_script_"* | *" --crate-name fakewa "*) exec "${driver[@]}" "$@" ;;
esac
exec "${driver[@]}" "$@" -C instrument-coverage -C llvm-args=-runtime-counter-relocation
