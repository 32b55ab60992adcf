"""CPU time of a benchmark's PostgreSQL backends: the server's share of the work is not in our process.

Connections of one run carry a distinctive ``application_name``; their backends' user + system time is
read from ``/proc/<pid>/stat``. Backends that ended in between are not counted; 0 without a readable /proc.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import asyncpg


async def backend_cpu(admin_url: str, application_names: Sequence[str]) -> float:
    """CPU seconds used so far by the live backends whose application name is one of ``application_names``
    (0 for none)."""
    if not application_names:
        return 0.0
    admin = await asyncpg.connect(admin_url)
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1::text[])",
            list(application_names),
        )
    finally:
        await admin.close()
    ticks = 0
    for row in rows:
        try:
            fields = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")
