"""Reading heaptrack_print's reports: bytes per allocation site.

Shared by heap-per-session.py (peak bytes per site) and heap-growth.py
(live bytes per site). A site is named by its first frames outside the
standard library and a few collections, registry paths shortened to the
crate's own.
"""

import collections
import re

SKIP = ("/rustc/", "library/std", "library/alloc", "bytes-1", "hashbrown",
        "src/bytes_mut.rs", "smallvec", "indexmap")
REGISTRY = re.compile(r"/root/\.cargo/registry/src/[^/]+/|.*/registry/src/[^/]+/")

# The heading of a site in a report, its bytes in the first group.
PEAK = re.compile(r"^([\d.]+[KMG]?)B? peak memory consumed over \d+ calls from")
LEAKED = re.compile(r"^([\d.]+[KMG]?)B? leaked over \d+ calls from")


def size(text):
    """heaptrack_print's "1.23M" as bytes."""
    m = re.match(r"([\d.]+)([KMG]?)", text)
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]


def sites(lines, heading, frames):
    """Bytes per site: the sites under each `heading` line, named by their
    first `frames` frames outside SKIP."""
    totals = collections.Counter()
    cost, names = None, []
    for line in lines:
        m = heading.match(line)
        if m:
            if cost is not None:
                totals[tuple(names)] += cost
            cost, names = size(m.group(1)), []
            continue
        m = re.match(r"^\s+at (\S+):(\d+)", line)
        if cost is not None and m and len(names) < frames:
            frame = f"{m.group(1)}:{m.group(2)}"
            if not any(s in frame for s in SKIP):
                names.append(REGISTRY.sub("", frame))
    if cost is not None:
        totals[tuple(names)] += cost
    return totals
