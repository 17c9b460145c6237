#!/usr/bin/env python3
"""Where a long run's heap grew between two moments, by allocation site.

heaptrack records every allocation and free with a clock line (`c <ms>`,
hexadecimal) every so often, so a recording cut at a clock line is the
recording of a run that stopped there, and heaptrack_print's "leaked"
figure for it is what was live at that moment. This script cuts one
recording at two moments, prints both live heaps and the sites whose live
bytes changed most between them.

Record the daemon under a soak with the profiling build (line tables for
the dependencies; see scripts/heap-per-session.py for the build command)
and a wrapper that keeps the daemon's pid, so the soak's RSS and fd
columns stay the daemon's (the daemon re-executes itself unless
GLIBC_TUNABLES already has its setting, which would shed the preload):

    #!/bin/sh
    pipe=$(mktemp -u); mkfifo "$pipe"
    /usr/lib/heaptrack/libexec/heaptrack_interpret < "$pipe" | zstd -q -c > /tmp/heap.zst &
    GLIBC_TUNABLES=glibc.malloc.tcache_count=0 \\
    LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so \\
    DUMP_HEAPTRACK_OUTPUT="$pipe" exec /path/to/prof/whatsd "$@"

    BENCH_WHATSD_BIN=/path/to/that/wrapper SOAK_KILL_EVERY_MIN=0 … soak --bench
    scripts/heap-growth.py /tmp/heap.zst 60 110
    scripts/heap-growth.py /tmp/heap.zst --series

Minutes count from the daemon's start. The recording may still be growing
(the last complete frame is used). `--series` prints, each minute, the
live heap as heaptrack counts it beside the RSS it recorded at the same
moment: when RSS climbs and the live heap does not, the difference is the
allocator's free space, not data held.
"""

import os
import re
import subprocess
import sys
import tempfile

from heaptrack_report import LEAKED, sites, size

FRAMES = 4


def cut(recording, minutes, directory):
    """Writes the recording up to each moment into its own file; returns,
    per moment in order, the file and the clock (ms) its cut reached."""
    marks = sorted(minutes)
    paths = [os.path.join(directory, f"cut-{m}") for m in marks]
    outputs = [open(path, "wb") for path in paths]
    reached = []
    zstd = subprocess.Popen(["zstd", "-dcq", recording], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    clock = 0
    for line in zstd.stdout:
        if line[:2] == b"c ":
            clock = int(line[2:], 16)
            while len(reached) < len(marks) and clock >= marks[len(reached)] * 60_000:
                outputs[len(reached)].close()
                reached.append(clock)
            if len(reached) == len(marks):
                break
        for output in outputs[len(reached):]:
            output.write(line)
    zstd.kill()
    for output in outputs[len(reached):]:
        output.close()
        reached.append(clock)
    return list(zip(paths, reached))


def live(path):
    """Live bytes per site, and in all."""
    report = subprocess.run(
        ["heaptrack_print", "-f", path, "-p", "0", "-a", "0", "-T", "0", "-l", "1",
         "-m", "0", "-n", "100000"],
        check=True, capture_output=True, text=True).stdout
    total = re.search(r"^total memory leaked: ([\d.]+[KMG]?)", report, re.MULTILINE)
    return sites(report.splitlines(), LEAKED, FRAMES), size(total.group(1)) if total else 0.0


def series(recording):
    """Live heap and RSS each minute, from the allocation stream."""
    sizes, live, peak, rss, minute = [], 0, 0, 0, 0
    zstd = subprocess.Popen(["zstd", "-dcq", recording], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    print("minute  live heap MiB  minute's peak MiB  RSS MiB")
    for line in zstd.stdout:
        if not line.endswith(b"\n"):
            break  # a recording still being written ends mid-line
        kind = line[:1]
        if kind == b"+":
            live += sizes[int(line[2:], 16)]
            peak = max(peak, live)
        elif kind == b"-":
            live -= sizes[int(line[2:], 16)]
        elif kind == b"a":
            sizes.append(int(line.split()[1], 16))
        elif kind == b"R":
            rss = int(line[2:], 16) * os.sysconf("SC_PAGE_SIZE")
        elif kind == b"c":
            now = int(line[2:], 16) / 60_000
            if now >= minute + 1:
                minute = int(now)
                print(f"{minute:6d}  {live / 2**20:13.1f}  {peak / 2**20:17.1f}  "
                      f"{rss / 2**20:7.1f}", flush=True)
                peak = live


def main():
    if sys.argv[2:] == ["--series"]:
        series(sys.argv[1])
        return
    recording, first, second = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    with tempfile.TemporaryDirectory() as directory:
        (p1, c1), (p2, c2) = cut(recording, [first, second], directory)
        (s1, t1), (s2, t2) = live(p1), live(p2)
    print(f"live heap at {c1 / 60000:.1f} min: {t1 / 2**20:.1f} MiB; "
          f"at {c2 / 60000:.1f} min: {t2 / 2**20:.1f} MiB")
    growth = sorted(((s2[k] - s1[k], k) for k in set(s1) | set(s2)), reverse=True)
    print("largest growth by site (KiB):")
    for change, frames in growth[:25]:
        print(f"{change / 1024:10.1f}  " + " <- ".join(frames))
    print("largest shrink by site (KiB):")
    for change, frames in sorted(growth)[:8]:
        print(f"{change / 1024:10.1f}  " + " <- ".join(frames))


if __name__ == "__main__":
    main()
