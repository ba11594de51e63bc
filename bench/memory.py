"""Peak memory of a benchmark's own process, for the bench scripts that run each measured step in a
child process."""

from __future__ import annotations

import resource


def peak_rss_gib() -> float:
    """This process's peak resident memory. Not ru_maxrss: a child inherits its parent's high-water
    mark and keeps it across exec; VmHWM is the peak of the process's own address space."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # no /proc: the inherited peak (KiB)
