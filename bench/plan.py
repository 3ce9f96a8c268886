"""What a benchmark run measures, and how much of it: the full plan, `--huge`, and the `--smoke` run."""

from __future__ import annotations

from dataclasses import dataclass, replace

MIB = 1024 * 1024
GIB = 1024 * MIB

#: The stages, in the order they run (`--only` picks some).
STAGES = (
    "large_file",
    "memory",
    "many_files",
    "concurrent_runs",
    "per_run",
    "cold_start",
    "memory_budget",
    "network",
    "uploader",
    "inputs",
    "queue_latency",
    "catalog",
)


@dataclass(frozen=True)
class Plan:
    name: str
    large_bytes: int  # 1. one file, timed against the old way and the transfer floor
    large_reps: int  # best of this many of each
    memory_sizes: tuple[int, ...]  # 2. one fresh process per size
    many_files: int  # 3. this many files in one run ...
    many_file_bytes: int  # ... of this size, concurrent vs COPY_CONCURRENCY=1
    many_reps: int
    concurrent_runs: int  # 4. this many runs at once against one worker ...
    concurrent_latency: float  # ... with this model latency
    concurrent_reps: int
    per_run_runs: int  # 5. sequential runs of one small file, no model latency
    cold_reps: int  # 6. fresh interpreters per import variant
    budget_runs: int  # 7. this many runs at once in a fresh process ...
    budget_files: int  # ... each of this many files ...
    budget_file_bytes: int  # ... of this size, with COPY_MEMORY_MB ...
    budget_memory_mb: int  # ... this, against COPY_MEMORY_MB unlimited (its maximum)
    net_large_bytes: int  # 8. through the shaping proxy: one large file ...
    net_large_reps: int
    net_many_files: int  # ... and many files in one run
    net_many_file_bytes: int
    net_many_reps: int
    uploader_bytes: int  # 9. upload_stream vs the SDK's upload_blob, a fresh process each ...
    uploader_reps: int  # ... best of this many ...
    uploader_networks: tuple[str, ...]  # ... on these: "loopback", "shaped" (through the proxy)
    input_sizes: tuple[int, ...]  # 10. one blob input uploaded to Azure OpenAI, a fresh process per size
    latency_runs: int  # 11. runs posted with wait false, finished by the queue, one at a time, per mode ...
    latency_model_s: tuple[float, float]  # ... with model latencies spread over this range
    catalog_sizes: tuple[int, ...]  # 12. one caller's runs stored, a page listed at each size ...
    retention_expired: int  # ... and a retention sweep of this many expired runs ...
    retention_fresh: int  # ... among this many fresh ones
    latency_ms: float = 20.0  # the simulated network (`bench.netshape`): round trip added per exchange ...
    mib_per_s: float = 40.0  # ... and bandwidth per connection and direction

    @property
    def max_file_bytes(self) -> int:
        """MAX_FILE_BYTES for the run: every file of the plan must be allowed."""
        return (
            max(
                self.large_bytes,
                *self.memory_sizes,
                self.many_file_bytes,
                self.budget_file_bytes,
                self.net_large_bytes,
                self.net_many_file_bytes,
            )
            + MIB
        )


FULL = Plan(
    name="full",
    large_bytes=256 * MIB,
    large_reps=3,
    memory_sizes=(64 * MIB, 256 * MIB, GIB),
    many_files=32,
    many_file_bytes=8 * MIB,
    many_reps=3,
    concurrent_runs=50,
    concurrent_latency=1.0,
    concurrent_reps=3,
    per_run_runs=200,
    cold_reps=7,
    budget_runs=20,
    budget_files=4,
    # Issues 14 and 22: 64 MiB files, 5 GiB per mode. A run longer than RUN_WAIT_SECONDS answers 202
    # and goes on in the worker; the load child asks again until it ends (`post_run_to_the_end`).
    # Each mode gets its own Azurite (`bench.stagerig`): 5 GiB is what one mode leaves in it.
    budget_file_bytes=64 * MIB,
    budget_memory_mb=512,
    net_large_bytes=256 * MIB,
    net_large_reps=2,
    net_many_files=16,
    net_many_file_bytes=8 * MIB,
    net_many_reps=3,
    uploader_bytes=256 * MIB,
    uploader_reps=2,
    uploader_networks=("loopback", "shaped"),
    input_sizes=(64 * MIB, 256 * MIB, GIB),
    latency_runs=50,
    latency_model_s=(1.0, 7.0),
    catalog_sizes=(10, 1000, 10_000),
    retention_expired=300,
    retention_fresh=50,
)

PLANS = {
    "full": FULL,
    "huge": replace(FULL, name="huge", large_bytes=GIB, large_reps=2),
    "smoke": Plan(
        name="smoke",
        large_bytes=3 * MIB,
        large_reps=1,
        memory_sizes=(MIB, 3 * MIB),
        many_files=4,
        many_file_bytes=256 * 1024,
        many_reps=1,
        concurrent_runs=4,
        concurrent_latency=0.2,
        concurrent_reps=1,
        per_run_runs=3,
        cold_reps=1,
        budget_runs=3,
        budget_files=2,
        budget_file_bytes=3 * MIB,
        budget_memory_mb=16,
        net_large_bytes=2 * MIB,
        net_large_reps=1,
        net_many_files=3,
        net_many_file_bytes=256 * 1024,
        net_many_reps=1,
        uploader_bytes=2 * MIB,
        uploader_reps=1,
        uploader_networks=("shaped",),  # a fresh process per upload: the smoke run keeps it to two
        input_sizes=(5 * MIB, 9 * MIB),  # over one 4 MiB part: the Uploads API's path, as the full sizes
        latency_runs=3,
        latency_model_s=(0.2, 0.4),
        catalog_sizes=(10, 150),  # over one page of 100 (the largest limit): a cursor page at each size
        retention_expired=12,
        retention_fresh=4,
    ),
}
