"""The goals of issues 4, 11 and 14, the printed table, and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.plan import MIB

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST = RESULTS_DIR / "latest.json"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its figure and whether it was met (for the stages that ran)."""
    rows: list[dict[str, Any]] = []

    def goal(figure: str, value: float, limit: float, text: str) -> None:
        rows.append({"figure": figure, "value": value, "goal": text, "met": value <= limit})

    if "large_file" in results:
        large = results["large_file"]
        goal("large_file.app_vs_old_way", large["app_vs_old_way"], 0.7, "<= 0.7")
        goal("large_file.app_vs_floor", large["app_vs_floor"], 1.25, "<= 1.25")
    if "memory" in results:
        mem = results["memory"]
        goal("memory.max_growth_MiB", mem["max_growth_MiB"], 64, "<= 64 MiB")
        goal("memory.spread_MiB", mem["spread_MiB"], 16, "<= 16 MiB (flat)")
    if "many_files" in results:
        goal("many_files.concurrent_vs_sequential", results["many_files"]["concurrent_vs_sequential"], 0.4, "<= 0.4")
    if "concurrent_runs" in results:
        goal("concurrent_runs.wall_s", results["concurrent_runs"]["wall_s"], 3.0, "<= 3 s")
    if "per_run" in results:
        per_run = results["per_run"]
        goal("per_run.identity_requests_after_first_run", per_run["identity_requests_after_first_run"], 0, "0")
        goal(
            "per_run.delegation_key_requests_after_first_run",
            per_run["delegation_key_requests_after_first_run"],
            0,
            "0",
        )
    if "cold_start" in results:
        goal("cold_start.app_vs_dependencies", results["cold_start"]["app_vs_dependencies"], 1.2, "<= 1.2")
    if "memory_budget" in results:
        budget = results["memory_budget"]
        limit = budget["copy_memory_mb"] + 64
        goal("memory_budget.budget_growth_MiB", budget["budget_growth_MiB"], limit, f"<= {limit} MiB")
        goal("memory_budget.bytes_unverified", budget["bytes_unverified"], 0, "0")
        goal("memory_budget.wall_vs_unlimited", budget["wall_vs_unlimited"], 1.2, "<= 1.2")
    if "network" in results:
        net = results["network"]
        goal("network.large_file.app_vs_old_way", net["large_file"]["app_vs_old_way"], 0.6, "<= 0.6")
        goal("network.large_file.app_vs_floor", net["large_file"]["app_vs_floor"], 1.2, "<= 1.2")
        goal(
            "network.many_files.concurrent_vs_sequential",
            net["many_files"]["concurrent_vs_sequential"],
            0.35,
            "<= 0.35",
        )
    if "inputs" in results:
        streamed = results["inputs"]
        goal("inputs.max_growth_MiB", streamed["max_growth_MiB"], 64, "<= 64 MiB")
        goal("inputs.spread_MiB", streamed["spread_MiB"], 16, "<= 16 MiB (flat)")
    return rows


def _size(n: int) -> str:
    return f"{n // (1024 * MIB)} GiB" if n >= 1024 * MIB and n % (1024 * MIB) == 0 else f"{n / MIB:g} MiB"


def _cpu(shares: dict[str, float]) -> str:
    return " ".join(f"{name} {share:.2f}" for name, share in shares.items())


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, figure, value, the goal's figure or "") for the table."""
    rows: list[tuple[str, str, str, str]] = []
    if "large_file" in results:
        r = results["large_file"]
        m = f"1. large file {_size(r['bytes'])}"
        rows += [
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
            (m, "app / (a)", f"{r['app_vs_old_way']:.2f}", "large_file.app_vs_old_way"),
            (m, "app / (b)", f"{r['app_vs_floor']:.2f}", "large_file.app_vs_floor"),
            (m, "(b) / (a): best app / (a) this rig allows", f"{r['floor_vs_old_way']:.2f}", ""),
            (m, "app: storage requests in flight, max", f"{r['app_storage_max_in_flight']}", ""),
            (m, "app: CPU busy (1.0 = one core)", _cpu(r["cpu_share_during_app"]), ""),
        ]
    if "memory" in results:
        r = results["memory"]
        m = "2. memory (fresh process)"
        rows += [
            (m, f"peak RSS growth copying {_size(s['bytes'])}", f"{s['rss_growth_bytes'] / MIB:.1f} MiB", "")
            for s in r["sizes"]
        ]
        rows += [
            (m, "max growth", f"{r['max_growth_MiB']:.1f} MiB", "memory.max_growth_MiB"),
            (m, "spread across sizes", f"{r['spread_MiB']:.1f} MiB", "memory.spread_MiB"),
            (m, "expected: 2 x block x (in flight + 1) + 10", f"{r['expected_MiB']:.0f} MiB", ""),
            (
                m,
                f"app CPU per GiB copied ({_size(r['sizes'][-1]['bytes'])} run)",
                f"{r['app_cpu_s_per_GiB']:.1f} s",
                "",
            ),
        ]
    if "many_files" in results:
        r = results["many_files"]
        m = f"3. {r['files']} files x {_size(r['file_bytes'])}"
        rows += [
            (m, f"COPY_CONCURRENCY={r['copy_concurrency']}, best of {r['reps']}", f"{r['concurrent_s']:.2f} s", ""),
            (m, "COPY_CONCURRENCY=1", f"{r['sequential_s']:.2f} s", ""),
            (m, "upload only, same files from memory", f"{r['upload_only_s']:.2f} s", ""),
            (
                m,
                "concurrent / sequential",
                f"{r['concurrent_vs_sequential']:.2f}",
                "many_files.concurrent_vs_sequential",
            ),
            (m, "concurrent / upload only", f"{r['concurrent_vs_upload_only']:.2f}", ""),
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
    if "concurrent_runs" in results:
        r = results["concurrent_runs"]
        m = f"4. {r['runs']} runs at once, model {r['model_latency_s']:g} s"
        rows += [
            (m, f"wall time, median of {r['reps']}", f"{r['wall_s']:.2f} s", "concurrent_runs.wall_s"),
            (m, "runs per second", f"{r['runs_per_s']:.1f}", ""),
            (m, "one run: median / max", f"{r['run_latency_median_s']:.2f} / {r['run_latency_max_s']:.2f} s", ""),
            (m, "one run past the model's latency, median", f"{r['overhead_past_model_median_s'] * 1000:.0f} ms", ""),
        ]
    if "per_run" in results:
        r = results["per_run"]
        first = r["first_run"]
        m = f"5. per run ({r['runs']} runs)"
        rows += [
            (m, "median time per run", f"{r['median_s'] * 1000:.0f} ms", ""),
            (m, "model requests per run", f"{r['model_requests_per_run']:g}", ""),
            (m, "storage requests per run", f"{r['storage_requests_per_run']:g}", ""),
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
    if "cold_start" in results:
        r = results["cold_start"]
        m = "6. cold start"
        rows += [
            (m, f"import function_app, median of {r['reps']}", f"{r['app_import_s'] * 1000:.0f} ms", ""),
            (m, "import its dependencies alone", f"{r['dependencies_import_s'] * 1000:.0f} ms", ""),
            (m, "app / dependencies", f"{r['app_vs_dependencies']:.2f}", "cold_start.app_vs_dependencies"),
        ]
    if "memory_budget" in results:
        rows += _budget_rows(results["memory_budget"])
    if "network" in results:
        rows += _network_rows(results["network"])
    if "uploader" in results:
        rows += _uploader_rows(results["uploader"])
    if "inputs" in results:
        rows += _inputs_rows(results["inputs"])
    return rows


def _budget_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
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


def _network_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    large, many = r["large_file"], r["many_files"]
    shaping = f"{r['latency_ms']:g} ms, {r['mib_per_s']:g} MiB/s"
    m = f"8. network {shaping}: {_size(large['bytes'])}"
    rows = [
        (m, f"app, best of {large['reps']}", f"{large['app_s']:.2f} s ({large['app_MiB_per_s']:.0f} MiB/s)", ""),
        (m, "(a) old way: SDK download to disk, then upload", f"{large['old_way_s']:.2f} s", ""),
        (m, "download only / upload only", f"{large['download_only_s']:.2f} / {large['upload_only_s']:.2f} s", ""),
        (m, "(b) floor = max(download only, upload only)", f"{large['floor_s']:.2f} s", ""),
        (m, "app / (a)", f"{large['app_vs_old_way']:.2f}", "network.large_file.app_vs_old_way"),
        (m, "app / (b)", f"{large['app_vs_floor']:.2f}", "network.large_file.app_vs_floor"),
        (m, "app: CPU busy", _cpu(large["cpu_share_during_app"]), ""),
    ]
    m = f"8. network {shaping}: {many['files']} x {_size(many['file_bytes'])}"
    rows += [
        (
            m,
            f"COPY_CONCURRENCY={many['copy_concurrency']}, best of {many['reps']}",
            f"{many['concurrent_s']:.2f} s",
            "",
        ),
        (m, "COPY_CONCURRENCY=1", f"{many['sequential_s']:.2f} s", ""),
        (m, "upload only, same files from memory", f"{many['upload_only_s']:.2f} s", ""),
        (
            m,
            "concurrent / sequential",
            f"{many['concurrent_vs_sequential']:.2f}",
            "network.many_files.concurrent_vs_sequential",
        ),
        (m, "upload only / sequential: best this rig allows", f"{many['upload_only_vs_sequential']:.2f}", ""),
        (m, "concurrent: CPU busy", _cpu(many["cpu_share"]["concurrent"]), ""),
    ]
    return rows


def _uploader_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
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


def _inputs_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
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


def table(results: dict[str, Any]) -> str:
    """The figures as a fixed-width table, then the machine and the goals met."""
    by_figure = {g["figure"]: g for g in results.get("goals", [])}
    lines = []
    for measurement, figure, value, goal_figure in _rows(results):
        g = by_figure.get(goal_figure)
        lines.append(
            (measurement, figure, value, g["goal"] if g else "", ("met" if g["met"] else "MISSED") if g else "")
        )
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
    out += [
        "",
        f"machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), {machine.get('memory_GiB')} GiB RAM, "
        f"Python {machine.get('python')}, Azurite {machine.get('azurite')}; other load during the run: "
        f"{machine.get('other_load_cpus', 0):.2f} CPUs",
        f"tuning: {tuning}",
        f"goals: {len(by_figure) - len(missed)} met, {len(missed)} missed"
        + (f" ({', '.join(missed)})" if missed else ""),
        f"plan: {results['plan']['name']}, {results.get('duration_s', 0):.0f} s in all",
    ]
    return "\n".join(out)


def write_results(results: dict[str, Any], path: Path = LATEST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path
