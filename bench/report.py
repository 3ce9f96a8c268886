"""The printed table and the JSON file of a benchmark run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.goals import failed_stages
from bench.plan import MIB, STAGES

Row = tuple[str, str, str, str]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST = RESULTS_DIR / "latest.json"


def _size(n: int) -> str:
    return f"{n // (1024 * MIB)} GiB" if n >= 1024 * MIB and n % (1024 * MIB) == 0 else f"{n / MIB:g} MiB"


def _cpu(shares: dict[str, float]) -> str:
    return " ".join(f"{name} {share:.2f}" for name, share in shares.items())


def _large_file_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    m = f"1. large file {_size(r['bytes'])}"
    rows += [
        (m, "app / (a) old way: the headline", f"{r['app_vs_old_way']:.2f}", ""),
        (m, "(b) / (a): the best app / (a) this rig allows", f"{r['floor_vs_old_way']:.2f}", ""),
        (m, "app / (b) floor", f"{r['app_vs_floor']:.2f}", "large_file.app_vs_floor"),
        (
            m,
            f"app: POST /api/runs, best of {r['reps']}",
            f"{r['app_s']:.2f} s ({r['app_MiB_per_s']:.0f} MiB/s)",
            "",
        ),
        (m, "(a) old way: SDK download to disk, then upload", f"{r['old_way_s']:.2f} s", ""),
        (m, "download only (emulator -> discard)", f"{r['download_only_s']:.2f} s", ""),
        (m, "upload only (memory -> Azurite, same settings)", f"{r['upload_only_s']:.2f} s", ""),
        (m, "(b) floor = max(download only, upload only)", f"{r['floor_s']:.2f} s", ""),
        (m, "(c) download only and upload only at once", f"{r['both_at_once_s']:.2f} s", ""),
        (m, "app / (c)", f"{r['app_vs_both_at_once']:.2f}", ""),
        (m, "app: storage requests in flight, max", f"{r['app_storage_max_in_flight']}", ""),
        (m, "app: CPU busy (1.0 = one core)", _cpu(r["cpu_share_during_app"]), ""),
    ]
    return rows


def _memory_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    m = "2. memory (fresh process)"
    rows += [
        (m, f"peak RSS growth copying {_size(s['bytes'])}", f"{s['rss_growth_bytes'] / MIB:.1f} MiB", "")
        for s in r["sizes"]
    ]
    rows += [
        (m, "max growth", f"{r['max_growth_MiB']:.1f} MiB", "memory.max_growth_MiB"),
        (m, "spread across sizes", f"{r['spread_MiB']:.1f} MiB", "memory.spread_MiB"),
        (m, "budget one copy reserves: (block + 1 MiB) x (in flight + 1)", f"{r['expected_MiB']:.0f} MiB", ""),
        (
            m,
            f"app CPU per GiB copied ({_size(r['sizes'][-1]['bytes'])} run)",
            f"{r['app_cpu_s_per_GiB']:.1f} s",
            "",
        ),
    ]
    return rows


def _many_files_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    m = f"3. {r['files']} files x {_size(r['file_bytes'])}"
    rows += [
        (
            m,
            "concurrent / upload only",
            f"{r['concurrent_vs_upload_only']:.2f}",
            "many_files.concurrent_vs_upload_only",
        ),
        (m, f"COPY_CONCURRENCY={r['copy_concurrency']}, best of {r['reps']}", f"{r['concurrent_s']:.2f} s", ""),
        (m, "COPY_CONCURRENCY=1", f"{r['sequential_s']:.2f} s", ""),
        (m, "upload only, same files from memory", f"{r['upload_only_s']:.2f} s", ""),
        (m, "concurrent / sequential", f"{r['concurrent_vs_sequential']:.2f}", ""),
        (m, "upload only / sequential: best this rig allows", f"{r['upload_only_vs_sequential']:.2f}", ""),
        (
            m,
            "storage requests in flight, max",
            f"{r['storage_max_in_flight']['concurrent']} (sequential {r['storage_max_in_flight']['sequential']})",
            "",
        ),
        (m, "concurrent: CPU busy", _cpu(r["cpu_share"]["concurrent"]), ""),
        (m, "sequential: CPU busy", _cpu(r["cpu_share"]["sequential"]), ""),
    ]
    return rows


def _concurrent_runs_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    m = f"4. {r['runs']} runs at once, model {r['model_latency_s']:g} s"
    rows += [
        (
            m,
            "wall / (model only + floor)",
            f"{r['wall_vs_model_plus_floor']:.2f}",
            "concurrent_runs.wall_vs_model_plus_floor",
        ),
        (m, f"wall time, median of {r['reps']}", f"{r['wall_s']:.2f} s", ""),
        (m, "model only: the same runs, nothing copied", f"{r['model_only_s']:.2f} s", ""),
        (
            m,
            "floor: max(download only, upload only), all at once",
            f"{r['floor_s']:.2f} s ({r['download_only_s']:.2f} / {r['upload_only_s']:.2f})",
            "",
        ),
        (m, "runs per second", f"{r['runs_per_s']:.1f}", ""),
        (m, "one run: median / max", f"{r['run_latency_median_s']:.2f} / {r['run_latency_max_s']:.2f} s", ""),
        (m, "one run past the model's latency, median", f"{r['overhead_past_model_median_s'] * 1000:.0f} ms", ""),
    ]
    return rows


def _per_run_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    first = r["first_run"]
    m = f"5. per run ({r['runs']} runs)"
    rows += [
        (m, "median time per run", f"{r['median_s'] * 1000:.0f} ms", ""),
        (m, "model requests per run", f"{r['model_requests_per_run']:g}", ""),
        (m, "storage requests per run", f"{r['storage_requests_per_run']:g}", "per_run.storage_requests_per_run"),
        (
            m,
            "  blob / table / queue",
            " / ".join(f"{v:g}" for v in r["storage_requests_by_service_per_run"].values()),
            "",
        ),
        *((m, f"  {kind}", f"{count:g}", "") for kind, count in r["storage_requests_by_kind_per_run"].items()),
        (
            m,
            "identity requests after the first run",
            f"{r['identity_requests_after_first_run']}",
            "per_run.identity_requests_after_first_run",
        ),
        (
            m,
            "delegation key requests after the first",
            f"{r['delegation_key_requests_after_first_run']}",
            "per_run.delegation_key_requests_after_first_run",
        ),
        (
            m,
            "first run: identity / key / storage",
            f"{first['identity_requests']} / {first['delegation_key_requests']} / {first['storage_requests']}",
            "",
        ),
    ]
    return rows


def _queue_latency_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    low, high = r["model_latency_s"]
    for mode in ("queue", "webhook"):
        f = r[mode]
        m = f"11. wait false, {'queue + webhook' if mode == 'webhook' else 'queue'}"
        rows += [
            (m, f"model end -> callback, median / p95 of {r['runs']}",
             f"{f['to_callback']['median_s'] * 1000:.0f} / {f['to_callback']['p95_s'] * 1000:.0f} ms", ""),
            (m, "p95 / (2 s + copy time)", f"{f['p95_vs_goal']:.2f}", f"queue_latency.{mode}.p95_vs_goal"),
            (m, "model end -> manifest written, median / p95",
             f"{f['to_manifest']['median_s'] * 1000:.0f} / {f['to_manifest']['p95_s'] * 1000:.0f} ms", ""),
        ]  # fmt: skip
    m = "11. wait false"
    rows += [
        (m, "model latencies (spread evenly)", f"{low:g} to {high:g} s", ""),
        (m, "copy time of the file (download, upload)", f"{r['copy_s'] * 1000:.0f} ms", ""),
        (m, "storage requests per run (both modes)", f"{r['storage_requests_per_run']:g}", ""),
    ]
    return rows


def _catalog_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    listing, sweep = r["listing"], r["retention"]
    m = "12. catalog"
    for size in listing["sizes"]:
        pages = [size[p] for p in ("first_page", "cursor_page") if p in size]
        rows.append(
            (m, f"{size['runs_stored']} runs: requests per page (first, cursor)",
             " / ".join(f"{p['requests']:g}" for p in pages) + "  "
             + " / ".join(f"{p['median_ms']:.0f} ms" for p in pages), "")
        )  # fmt: skip
    rows.append(
        (m, "requests per page, largest / smallest", f"{listing['requests_largest_vs_smallest']:g}",
         "catalog.requests_largest_vs_smallest")
    )  # fmt: skip
    m = f"12. retention {sweep['expired']} expired"
    rows += [
        (m, "invocations (runs deleted each)", f"{sweep['invocations']} ({sweep['runs_deleted_per_invocation']})", ""),
        (m, "time per invocation, max", f"{sweep['invocation_s_max']:.1f} s", ""),
        (m, "per deleted run: time, storage requests",
         f"{sweep['ms_per_deleted_run']:.0f} ms, {sweep['storage_requests_per_deleted_run']:g}", ""),
        (m, "fresh runs kept", f"{sweep['fresh_kept']} of {sweep['fresh']}", ""),
    ]  # fmt: skip
    return rows


def _cold_start_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    m = "6. cold start"
    rows += [
        (m, f"import function_app, median of {r['reps']}", f"{r['app_import_s'] * 1000:.0f} ms", ""),
        (m, "import its dependencies alone", f"{r['dependencies_import_s'] * 1000:.0f} ms", ""),
        (m, "app / dependencies", f"{r['app_vs_dependencies']:.2f}", "cold_start.app_vs_dependencies"),
    ]
    return rows


def _memory_budget_rows(r: dict[str, Any]) -> list[Row]:
    m = f"7. {r['runs']} runs x {r['files_per_run']} x {_size(r['file_bytes'])}"
    budget, unlimited = r["by_mode"]["budget"], r["by_mode"]["unlimited"]
    return [
        (
            m,
            f"peak RSS growth, COPY_MEMORY_MB={r['copy_memory_mb']} (fresh process)",
            f"{r['budget_growth_MiB']:.0f} MiB",
            "memory_budget.budget_growth_MiB",
        ),
        (m, "peak RSS growth, unlimited", f"{r['unlimited_growth_MiB']:.0f} MiB", ""),
        (
            m,
            "budget reserved at most / copies that waited",
            f"{r['budget_peak_MiB']:.0f} MiB / {r['budget_waits']}",
            "",
        ),
        (m, "wall time with the budget / unlimited", f"{r['budget_wall_s']:.1f} / {r['unlimited_wall_s']:.1f} s", ""),
        (m, "budget / unlimited", f"{r['wall_vs_unlimited']:.2f}", "memory_budget.wall_vs_unlimited"),
        (
            m,
            "bytes read back with a wrong sha256 or missing",
            f"{r['bytes_unverified']} of {_size(r['bytes_expected'])}",
            "memory_budget.bytes_unverified",
        ),
        (m, "files copied per mode", f"{budget['files']} / {unlimited['files']}", ""),
    ]


def _network_rows(r: dict[str, Any]) -> list[Row]:
    large, many = r["large_file"], r["many_files"]
    shaping = f"{r['latency_ms']:g} ms, {r['mib_per_s']:g} MiB/s"
    m = f"8. network {shaping}: {_size(large['bytes'])}"
    rows: list[Row] = [
        (m, "app / (a) old way: the headline", f"{large['app_vs_old_way']:.2f}", ""),
        (m, "(b) / (a): the best app / (a) this rig allows", f"{large['floor_vs_old_way']:.2f}", ""),
        (m, "app / (b) floor", f"{large['app_vs_floor']:.2f}", "network.large_file.app_vs_floor"),
        (m, f"app, best of {large['reps']}", f"{large['app_s']:.2f} s ({large['app_MiB_per_s']:.0f} MiB/s)", ""),
        (m, "(a) old way: SDK download to disk, then upload", f"{large['old_way_s']:.2f} s", ""),
        (m, "download only / upload only", f"{large['download_only_s']:.2f} / {large['upload_only_s']:.2f} s", ""),
        (m, "(b) floor = max(download only, upload only)", f"{large['floor_s']:.2f} s", ""),
        (m, "(c) download only and upload only at once", f"{large['both_at_once_s']:.2f} s", ""),
        (m, "app / (c)", f"{large['app_vs_both_at_once']:.2f}", ""),
        (m, "app: CPU busy", _cpu(large["cpu_share_during_app"]), ""),
    ]
    m = f"8. network {shaping}: {many['files']} x {_size(many['file_bytes'])}"
    return rows + [
        (
            m,
            "concurrent / upload only",
            f"{many['concurrent_vs_upload_only']:.2f}",
            "network.many_files.concurrent_vs_upload_only",
        ),
        (
            m,
            f"COPY_CONCURRENCY={many['copy_concurrency']}, best of {many['reps']}",
            f"{many['concurrent_s']:.2f} s",
            "",
        ),
        (m, "COPY_CONCURRENCY=1", f"{many['sequential_s']:.2f} s", ""),
        (m, "upload only, same files from memory", f"{many['upload_only_s']:.2f} s", ""),
        (m, "concurrent / sequential", f"{many['concurrent_vs_sequential']:.2f}", ""),
        (m, "upload only / sequential: best this rig allows", f"{many['upload_only_vs_sequential']:.2f}", ""),
        (m, "concurrent: CPU busy", _cpu(many["cpu_share"]["concurrent"]), ""),
    ]


def _uploader_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for network, label in (("loopback", "loopback"), ("shaped", f"{r['latency_ms']:g} ms, {r['mib_per_s']:g} MiB/s")):
        if network not in r:
            continue
        n = r[network]
        m = f"9. uploader {_size(r['bytes'])}, {label}"
        rows += [
            (
                m,
                f"upload_stream: time, best of {r['reps']} / peak RSS growth",
                f"{n['ours_s']:.2f} s / {n['ours_growth_MiB']:.0f} MiB",
                "",
            ),
            (m, "SDK upload_blob + metadata: time / growth", f"{n['sdk_s']:.2f} s / {n['sdk_growth_MiB']:.0f} MiB", ""),
            (m, "upload_stream / SDK, time", f"{n['ours_vs_sdk']:.2f}", ""),
        ]
    return rows


def _inputs_rows(r: dict[str, Any]) -> list[Row]:
    m = "10. input upload (fresh process)"
    rows = [
        (
            m,
            f"peak RSS growth uploading {_size(s['bytes'])} ({s['parts']} parts)",
            f"{s['rss_growth_bytes'] / MIB:.1f} MiB",
            "",
        )
        for s in r["sizes"]
    ]
    last = r["sizes"][-1]
    return rows + [
        (m, "max growth", f"{r['max_growth_MiB']:.1f} MiB", "inputs.max_growth_MiB"),
        (m, "spread across sizes", f"{r['spread_MiB']:.1f} MiB", "inputs.spread_MiB"),
        (m, "parts of / in flight", f"{_size(r['part_bytes'])} / {r['parts_in_flight']}", ""),
        (
            m,
            f"{_size(last['bytes'])}: time / app CPU per GiB",
            f"{last['upload_s']:.2f} s ({r['app_MiB_per_s']:.0f} MiB/s) / {r['app_cpu_s_per_GiB']:.1f} s",
            "",
        ),
    ]


#: The table's rows of each stage's figures, in the order of STAGES.
STAGE_ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "large_file": _large_file_rows,
    "memory": _memory_rows,
    "many_files": _many_files_rows,
    "concurrent_runs": _concurrent_runs_rows,
    "per_run": _per_run_rows,
    "cold_start": _cold_start_rows,
    "memory_budget": _memory_budget_rows,
    "network": _network_rows,
    "uploader": _uploader_rows,
    "inputs": _inputs_rows,
    "queue_latency": _queue_latency_rows,
    "catalog": _catalog_rows,
}
assert tuple(STAGE_ROWS) == STAGES


def _azurite_rows(r: dict[str, Any]) -> list[Row]:
    m = "bench: its own Azurite"
    return [
        (
            m,
            f"peak RSS, largest instance ({r['peak_stage']}) / store cap",
            f"{r['peak_MiB']:.0f} / {r['cap_MiB']:.0f} MiB = {r['peak_vs_cap']:.2f}",
            "azurite.peak_vs_cap",
        ),
        (m, "peak RSS of every Azurite at once", f"{r['all_at_once_peak_MiB']:.0f} MiB", ""),
    ]


def _rows(results: dict[str, Any]) -> list[Row]:
    """(measurement, figure, value, the goal's figure or "") for the table; a failed stage is one row."""
    rows: list[Row] = []
    for number, (name, stage_rows) in enumerate(STAGE_ROWS.items(), start=1):
        result = results.get(name)
        if result is None:
            continue
        if result.get("failed"):
            rows.append((f"{number}. {name}", "FAILED", result["error"].splitlines()[0][:100], ""))
        else:
            rows += stage_rows(result)
    if "azurite" in results:
        rows += _azurite_rows(results["azurite"])
    return rows


def table(results: dict[str, Any]) -> str:
    """The figures as a fixed-width table, then the machine and the goals met."""
    by_figure = {g["figure"]: g for g in results.get("goals", [])}
    lines = []
    for measurement, figure, value, goal_figure in _rows(results):
        g = by_figure.get(goal_figure)
        mark = ("met" if g["met"] else "MISSED") if g else ("FAILED" if figure == "FAILED" else "")
        lines.append((measurement, figure, value, g["goal"] if g else "", mark))
    header = ("measurement", "figure", "value", "goal", "")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths).rstrip())
    previous = None
    for row in lines:
        shown = (row[0] if row[0] != previous else "", *row[1:])
        previous = row[0]
        out.append("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip())
    machine = results.get("machine", {})
    tuning = ", ".join(f"{k}={v}" for k, v in results.get("tuning", {}).items())
    missed = [g["figure"] for g in results.get("goals", []) if not g["met"]]
    failed = failed_stages(results)
    load = machine.get("loadavg_start"), machine.get("loadavg_end")
    out += [
        "",
        f"machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), {machine.get('memory_GiB')} GiB RAM, "
        f"Python {machine.get('python')}, Azurite {machine.get('azurite')}; other load during the run: "
        f"{machine.get('other_load_cpus', 0):.2f} CPUs"
        + (f"; load average {load[0][0]:.2f} at the start, {load[1][0]:.2f} at the end" if all(load) else ""),
        f"tuning: {tuning}",
        f"goals: {len(by_figure) - len(missed)} met, {len(missed)} missed"
        + (f" ({', '.join(missed)})" if missed else ""),
        f"stages failed: {len(failed)}" + (f" ({', '.join(failed)})" if failed else ""),
        f"plan: {results['plan']['name']}, {results.get('duration_s', 0):.0f} s in all",
    ]
    return "\n".join(out)


def write_results(results: dict[str, Any], path: Path = LATEST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path
