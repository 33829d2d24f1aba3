"""Demo pieces for a city of collectors and one hub (`make demo-city`, tests/test_hub_collectors.py).

A monthly summary is written when a month closes (00:00 on the 4th of the next month), so a demo that should
show a bulletin within a minute needs a month that closed already. `seed_closed_month` writes into a
collector's state store what a collector running through the last hour of the last closed month would have
written: its uptime buckets and, per device, good buckets acknowledged at once for the share of the hour given.
`collector run` then closes that month at its start, as after any restart: the key record and the monthly
summary enter its chain and go to the hub through the outbox. Only ever for demo state directories: the buckets
are made up, and every figure of a demo config (`allow_simulated: true`) says 含模拟设备.
"""

from __future__ import annotations

import time
from pathlib import Path

from collector.indicators import periods
from collector.status import StatusStore


def last_closed_month(tz: str, now: float | None = None) -> periods.Period:
    y, m = periods.last_closed_month(time.time() if now is None else now, tz)
    return periods.month(y, m, tz)


def seed_closed_month(state_dir: Path, bucket: float, online: dict[str, float], tz: str = "Asia/Shanghai",
                      hours: float = 1.0, now: float | None = None) -> periods.Period:
    """The collector's uptime through the last `hours` of the last closed month, and each device of `online`
    good (acknowledged 1 s after its bucket) in that share of the buckets, evenly spread. Returns the month."""
    month = last_closed_month(tz, now)
    b = int(bucket)
    end = int(month.end) // b * b
    buckets = list(range(end - int(hours * 3600) // b * b, end, b))
    good: dict[tuple[str, int], float] = {}
    for device, share in online.items():
        n = round(share * len(buckets))
        step = len(buckets) / n if n else 0.0
        for i in range(n):
            bk = buckets[int(i * step)]
            good[(device, bk)] = bk + 1.0
    state_dir.mkdir(parents=True, exist_ok=True)
    store = StatusStore(state_dir / "status.db", bucket)
    try:
        store.write([], [], good, set(buckets))
    finally:
        store.close()
    return month
