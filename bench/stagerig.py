"""A fresh Azurite for each stage (and for each mode of stage 7), and the memory every Azurite used.

Why a fresh process rather than deleting what a stage wrote: Azurite's in-memory store frees a
deleted blob's bytes only in its garbage collection, which runs once every 10 minutes
(`BlobGCManager`, `DEFAULT_GC_INTERVAL_MS` in Azurite 3.37), and the store is capped at half the
machine's memory (`MemoryExtentStore.DEFAULT_EXTENT_MEMORY_LIMIT`). Every stage deleted its runs,
and the full plan still hit the cap at stage 9 (issue 22: `MemoryExtentStoreAtSizeLimit`). A stage's
own Azurite (blob and queue service, the rig's certificate, bearer tokens from the rig's identity
endpoint) is stopped when the stage ends, whatever happened in it: its memory goes with it.

The rig's own Azurite stays up and idle (the tests share it). Memory: each instance's peak RSS is
read from the kernel (`VmHWM` of its Node process) just before it stops, and a sampler adds up the
RSS of every Azurite the bench runs, every 100 ms, for the peak of all of them at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_azure.azurite import Azurite
from tests.rig.rig import Rig

#: The app settings that point the app (and every baseline and child process) at the current
#: stage's Azurite; empty outside a stage (the rig's Azurite then).
STORAGE: dict[str, str] = {}


def azurite_cap_bytes() -> int:
    """The in-memory store's size limit of one Azurite: half of the machine's memory, as Azurite
    computes it (`Math.trunc(os.totalmem() * 0.5)`; Node reads MemTotal, as sysconf does)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _status_bytes(pid: int, name: str) -> int:
    """A `/proc/<pid>/status` memory field in bytes; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def azurite_pid(azurite: Azurite) -> int:
    """The Node process serving `azurite` (a child of this process: its command line names the port)."""
    needle = f"--blobPort\0{azurite.port}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and needle in cmdline:
            return int(entry.name)
    raise RuntimeError(f"no Azurite process serves port {azurite.port}")


@dataclass
class Instance:
    """One Azurite the bench ran: for which stage, and the most memory it held."""

    label: str
    pid: int
    peak_rss_bytes: int = 0


@dataclass
class AzuriteMemory:
    """Every Azurite of a bench run: each one's peak RSS, and the peak of all of them at once."""

    instances: list[Instance] = field(default_factory=list)
    live: dict[int, Instance] = field(default_factory=dict)
    all_at_once_peak_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, instance: Instance) -> None:
        with self._lock:
            self.live[instance.pid] = instance
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="azurite-memory", daemon=True)
            self._thread.start()

    def done(self, instance: Instance) -> None:
        """Take the instance's peak (`VmHWM`) while its process still runs."""
        instance.peak_rss_bytes = _status_bytes(instance.pid, "VmHWM")
        self._sample_once()
        with self._lock:
            self.live.pop(instance.pid, None)
        self.instances.append(instance)

    def _sample_once(self) -> None:
        with self._lock:
            total = sum(_status_bytes(pid, "VmRSS") for pid in self.live)
            self.all_at_once_peak_bytes = max(self.all_at_once_peak_bytes, total)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self._sample_once()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def figures(self, rig: Rig) -> dict[str, Any]:
        """The figures of the run: the largest instance against its cap, and all of them at once."""
        cap = azurite_cap_bytes()
        largest = max(self.instances, key=lambda i: i.peak_rss_bytes, default=Instance("none", 0))
        rig_peak = _status_bytes(azurite_pid(rig.azurite), "VmHWM") if rig.azurite.running else 0
        mib = 1024 * 1024
        return {
            "cap_MiB": cap / mib,
            "peak_MiB": largest.peak_rss_bytes / mib,
            "peak_stage": largest.label,
            "peak_vs_cap": largest.peak_rss_bytes / cap,
            "all_at_once_peak_MiB": self.all_at_once_peak_bytes / mib,
            "rig_azurite_peak_MiB": rig_peak / mib,
            "instances": {i.label: i.peak_rss_bytes / mib for i in self.instances},
        }


MEMORY = AzuriteMemory()


@contextlib.contextmanager
def fresh_storage(rig: Rig, label: str, *, on_disk: bool = False) -> Iterator[Instance]:
    """A new, empty Azurite for the block: the app settings name it (`STORAGE`) until the block
    ends; then it stops, with everything written to it, even if the block failed. `on_disk` keeps
    its blobs in a temporary directory (removed after) instead of its memory."""
    location = Path(tempfile.mkdtemp(prefix="ci-files-bench-azurite-")) if on_disk else None
    azurite = Azurite(rig.tls, queue=True, location=location)
    try:
        azurite.start()
        instance = Instance(label, azurite_pid(azurite))
        MEMORY.watch(instance)
        saved = dict(STORAGE)
        STORAGE.update(
            {
                "OUTPUT_STORAGE_ACCOUNT_URL": azurite.account_url,
                "RUNS_QUEUE_STORAGE__queueServiceUri": azurite.queue_url,
                "RUNS_TABLE_SERVICE_URL": azurite.table_url,  # else the runs table is the rig's Azurite's
            }
        )
        try:
            yield instance
        finally:
            STORAGE.clear()
            STORAGE.update(saved)
            MEMORY.done(instance)
    finally:
        azurite.stop()
        if location is not None:
            shutil.rmtree(location, ignore_errors=True)


def storage_url(rig: Rig) -> str:
    """The account URL of the storage in use: the current stage's Azurite, or the rig's."""
    return STORAGE.get("OUTPUT_STORAGE_ACCOUNT_URL", rig.azurite.account_url)


def current_pid() -> int | None:
    """The Node process of the current stage's Azurite (the innermost one), if a stage runs."""
    return next(reversed(MEMORY.live), None)
