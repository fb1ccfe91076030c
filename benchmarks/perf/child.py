"""One child process measured by the kernel: the benchmarks that time whole commands share it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def measure_child(name: str, argv: list[str], log: Path) -> dict:
    """Run `argv` with its output in `log`; its wall time, and its peak RSS (ru_maxrss, KiB on
    Linux) and CPU times from wait4. A failing child stops the benchmark with its log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    if code != 0:
        raise SystemExit(f"{name} failed ({code}):\n{log.read_text()[-3000:]}")
    return {"name": name, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "user_s": usage.ru_utime, "system_s": usage.ru_stime}
