#!/usr/bin/env python3
"""Plots the soak bench's CSV (`cargo bench --bench soak`, SOAK_CSV) as one
PNG: RSS, open fds, disk (data dir and store size), webhook outbox depth and
the daemon's threads / library tasks against minutes, one panel each.

    scripts/plot-soak.py target/soak.csv bench-results/soak-60min.png [--kills 10,20,...]

Needs matplotlib: when it is missing, the script creates a venv under
~/.cache/whatsd-soak/venv, installs matplotlib from PyPI into it and runs
itself again there. Vertical lines mark the daemon's kill -9 (minutes from
--kills, or every SOAK_KILL_EVERY_MIN minutes if that is set; none
otherwise).
"""

import csv
import os
import subprocess
import sys

VENV = os.path.expanduser("~/.cache/whatsd-soak/venv")


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        sys.exit("matplotlib is still missing in " + VENV)
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call([python, "-m", "pip", "install", "--quiet", "matplotlib"])
    os.execv(python, [python] + sys.argv)


def floats(rows, key):
    out = []
    for r in rows:
        try:
            out.append(float(r[key]))
        except (KeyError, ValueError):
            out.append(float("nan"))
    return out


def main():
    args = sys.argv[1:]
    kills = None
    if "--kills" in args:
        i = args.index("--kills")
        kills = [float(k) for k in args[i + 1].split(",") if k]
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    src, dst = args
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{src}: no samples")
    minutes = floats(rows, "minute")
    if kills is None and os.environ.get("SOAK_KILL_EVERY_MIN"):
        every = float(os.environ["SOAK_KILL_EVERY_MIN"])
        kills = [every * k for k in range(1, int(minutes[-1] / every) + 1)] if every > 0 else []
    panels = [
        (
            "memory (MiB)",
            [("rss_mib", "whatsd RSS")]
            + (
                [("heap_in_use_mib", "heap in use (glibc)"), ("heap_free_mib", "heap free, kept by glibc")]
                if "heap_in_use_mib" in rows[0]
                else []
            ),
        ),
        ("open fds", [("fds", "whatsd fds")]),
        (
            "disk (MiB)",
            [("disk_mib", "data dir (du)"), ("store_mib", "store size (metric)")]
            + ([("live_mib", "live keys + values (all trees)")] if "live_mib" in rows[0] else [])
            + (
                [("state_disk_mib", "state db (du)"), ("history_disk_mib", "history db (du)")]
                if "state_disk_mib" in rows[0]
                else []
            ),
        ),
        ("webhook outbox depth", [("outbox_depth", "outbox depth")]),
        ("library tasks", [("library_tasks", "library tasks")]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), sharex=True)
    for ax, (title, series) in zip(axes, panels):
        for key, label in series:
            ax.plot(minutes, floats(rows, key), marker=".", label=label)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        for k in kills or []:
            ax.axvline(k, color="red", alpha=0.25, linestyle="--")
        if len(series) > 1:
            ax.legend(loc="upper left", fontsize="small")
    threads = axes[-1].twinx()
    threads.plot(minutes, floats(rows, "threads"), color="gray", marker=".", label="threads")
    threads.set_ylabel("threads", color="gray")
    axes[-1].set_xlabel("minutes of load")
    sent = rows[-1].get("in_sent", "?")
    received = rows[-1].get("in_received", "?")
    fig.suptitle(
        f"whatsd soak: {rows[-1].get('connected', '?')} sessions connected at the end;\n"
        f"{received}/{sent} messages in had arrived at the last sample"
        + ("; dashed: kill -9 + restart" if kills else "")
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    fig.savefig(dst, dpi=90)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
