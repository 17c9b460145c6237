#!/usr/bin/env python3
"""Heap bytes per session by allocation site, from two heaptrack profiles.

Profiles of the sessions bench at two session counts (say 100 and 300),
taken at the moment all sessions are connected (`WHATSD_BENCH_EXIT=1`):

    CARGO_TARGET_DIR=target/prof cargo bench --offline \\
        --config 'profile.release.package."*".debug="line-tables-only"' \\
        --bench sessions --no-run
    GLIBC_TUNABLES=glibc.malloc.tcache_count=0 WHATSD_BENCH_SESSIONS=100 \\
        WHATSD_BENCH_EXIT=1 heaptrack -o /tmp/h100 target/prof/release/deps/sessions-… --bench
    (the same with 300 and -o /tmp/h300)
    heaptrack_print -f /tmp/h100.zst -p 1 -a 0 -T 0 -l 0 -m 0 -n 400 > /tmp/h100.txt
    heaptrack_print -f /tmp/h300.zst -p 1 -a 0 -T 0 -l 0 -m 0 -n 400 > /tmp/h300.txt
    scripts/heap-per-session.py /tmp/h100.txt /tmp/h300.txt 200

Each site is named by its first three frames outside the standard
library; the figure is (bytes at the larger count - bytes at the smaller)
/ the difference in sessions. The dependencies need line tables (the
`--config` above), or their frames have no file names.
"""

import sys

from heaptrack_report import PEAK, sites


def load(path):
    with open(path) as report:
        return sites(report, PEAK, 3)


def main():
    small, large, sessions = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
    per = sorted(((large[k] - small[k]) / sessions, k) for k in set(small) | set(large))
    print(f"heap per session: {sum(v for v, _ in per) / 1024:.1f} KiB")
    for value, site in reversed(per[-30:]):
        print(f"{value / 1024:7.1f} KiB  " + "  <  ".join(site))


if __name__ == "__main__":
    main()
