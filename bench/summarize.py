#!/usr/bin/env python3
"""Condenses a Google Benchmark JSON report into the figures cobatch tracks.

    bench/summarize.py build/bench/raw.json build/bench/summary.json [build/bench/server.json]

The optional third file holds the example server's figures, measured by
bench/server/server_bench.py (wrk and an asyncio client on loopback).

Each figure is the median over repetitions of one benchmark's real time (in
nanoseconds) or of one of its user counters. Figures whose benchmark did not
run are listed under "missing" rather than guessed. Python 3 standard library
only, so it runs wherever the benchmark does.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

REAL_TIME = "real_time"
CPU_TIME = "cpu_time"

# key in summary.json -> (benchmark name before any "/", field). The field is
# REAL_TIME, CPU_TIME or the name of a user counter.
TABLE = {
    "resume_ns": ("BM_resume_reactor", "median_ns"),
    "resume_ns_p99": ("BM_resume_reactor", "p99_ns"),
    "resume_condvar_ns": ("BM_resume_condvar", "median_ns"),
    "switch_ns": ("BM_switch_coroutine", "per_switch_ns"),
    "switch_asio_awaitable_ns": ("BM_switch_asio_awaitable", "per_switch_ns"),
    "switch_barrier_ns": ("BM_switch_barrier", "per_switch_ns"),
    "idle_cpu_percent": ("BM_idle_cpu", "cpu_percent"),
    "slice_ns_4096": ("BM_slice_4096", REAL_TIME),
    "dispatch_ns": ("BM_dispatch_random_key", REAL_TIME),
    "attn_plan_ns_4096": ("BM_attn_plan_4096", REAL_TIME),
    "attn_plan_ns_4096_raw_table": ("BM_attn_plan_4096_raw_table", REAL_TIME),
    "lse_merge_gbps": ("BM_lse_merge_host", "gbps"),
    "lse_memcpy_gbps": ("BM_lse_merge_memcpy", "gbps"),
    "launch_eager_cpu_ns": ("BM_launch_eager_64", "launch_cpu_ns"),
    "launch_graph_cpu_ns": ("BM_launch_graph_64", "launch_cpu_ns"),
    "step_plan_ns": ("BM_step_plan", REAL_TIME),
    "step_plan_cpu_ns": ("BM_step_plan", "plan_cpu_ns"),
    "step_host_overhead_us": ("BM_step_host_overhead", "host_us_per_step"),
    "step_gap_us": ("BM_step_gap", "gap_overlapped_us"),
    "step_gap_sequential_us": ("BM_step_gap", "gap_sequential_us"),
    "step_gap_ratio": ("BM_step_gap", "gap_ratio"),
    "tuner_regret": ("BM_tuner_regret", "regret"),
}
# The completion reactor against the number of pending waits (8 streams), on
# fences that claim their order and on fences that do not, in the same run.
for _size in ("10", "1k", "10k"):
    TABLE[f"reactor_sweep_ns_{_size}"] = (f"BM_reactor_sweep_ordered_{_size}", REAL_TIME)
    TABLE[f"reactor_sweep_unordered_ns_{_size}"] = (f"BM_reactor_sweep_unordered_{_size}", REAL_TIME)
    TABLE[f"reactor_completion_ns_{_size}"] = (f"BM_reactor_completion_ordered_{_size}", REAL_TIME)
    TABLE[f"reactor_completion_unordered_ns_{_size}"] = (f"BM_reactor_completion_unordered_{_size}", REAL_TIME)
# The same benchmarks in CPU time: they run on one thread and never block, so
# on an idle machine the two agree; on a shared one the CPU time is the
# reactor's cost and the real time adds the time the thread waited for a core.
for _size in ("10k",):
    TABLE[f"reactor_sweep_cpu_ns_{_size}"] = (f"BM_reactor_sweep_ordered_{_size}", CPU_TIME)
    TABLE[f"reactor_sweep_unordered_cpu_ns_{_size}"] = (f"BM_reactor_sweep_unordered_{_size}", CPU_TIME)
    TABLE[f"reactor_completion_cpu_ns_{_size}"] = (f"BM_reactor_completion_ordered_{_size}", CPU_TIME)
    TABLE[f"reactor_completion_unordered_cpu_ns_{_size}"] = (f"BM_reactor_completion_unordered_{_size}", CPU_TIME)
TABLE["reactor_completion_cpu_ns_10"] = ("BM_reactor_completion_ordered_10", CPU_TIME)

# ratio key -> (numerator key, denominator key)
RATIOS = {
    "resume_condvar_over_resume": ("resume_condvar_ns", "resume_ns"),
    "switch_barrier_over_switch": ("switch_barrier_ns", "switch_ns"),
    # Host backend; the >= 5 target applies to real kernels on a GPU.
    "replay_cpu_ratio": ("launch_eager_cpu_ns", "launch_graph_cpu_ns"),
    # Host LSE merge throughput (bytes read + written per second) over
    # memcpy's on the same number of bytes, same run, one thread each.
    "lse_merge_bw_ratio": ("lse_merge_gbps", "lse_memcpy_gbps"),
    # Must stay near 1: a completion costs the same with 10,000 waits pending.
    "reactor_completion_10k_over_10": ("reactor_completion_ns_10k", "reactor_completion_ns_10"),
    "reactor_sweep_unordered_over_ordered_10k": ("reactor_sweep_unordered_ns_10k", "reactor_sweep_ns_10k"),
}

# Overlap sweeps: one benchmark per configuration (N, compute:comm). Each
# figure condenses the per-configuration medians of a counter.
#   key -> (benchmark, counter, "min" | "max")
SWEEPS = {
    "overlap_efficiency": ("BM_overlap_coroutine", "efficiency", "min"),
    "overlap_efficiency_threads": ("BM_overlap_threads", "efficiency", "min"),
    "overlap_efficiency_busy": ("BM_overlap_coroutine_busy", "efficiency", "min"),
    "overlap_efficiency_busy_threads": ("BM_overlap_threads_busy", "efficiency", "min"),
    # Host CPU per step, the most expensive configuration of each version.
    "overlap_host_cpu_us_coroutine": ("BM_overlap_coroutine", "host_cpu_us", "max"),
    "overlap_host_cpu_us_threads": ("BM_overlap_threads", "host_cpu_us", "max"),
    # Host decode attention, CPU time of one call (64 requests); the shapes
    # are listed per configuration, the figure is the slowest one.
    "paged_attention_decode_cpu_ns": ("BM_paged_attention_decode_host", CPU_TIME, "max"),
}
# Paired sweeps: the same configuration of two benchmarks, compared.
#   key -> (numerator benchmark, denominator benchmark, counter, "geomean" | "min" | "max")
PAIRED = {
    # CPU time per step of the thread-per-micro-batch version over the
    # coroutine version's, across the sweep.
    "overlap_cpu_ratio": ("BM_overlap_threads", "BM_overlap_coroutine", "host_cpu_us", "geomean"),
    "overlap_cpu_ratio_min": ("BM_overlap_threads", "BM_overlap_coroutine", "host_cpu_us", "min"),
    # Coroutine makespan over the threads' (no worse: <= 1 up to noise).
    "overlap_makespan_ratio": ("BM_overlap_coroutine", "BM_overlap_threads", "makespan_ms", "max"),
}

# target name -> (measured key, comparison, bound)
TARGETS = {
    "overlap_efficiency": ("overlap_efficiency", ">=", 0.95),
    "overlap_cpu_ratio": ("overlap_cpu_ratio", ">=", 3),
    "overlap_makespan_ratio": ("overlap_makespan_ratio", "<=", 1.02),
    "resume_ns": ("resume_ns", "<=", 2000),
    "resume_condvar_over_resume": ("resume_condvar_over_resume", ">=", 3),
    "switch_ns": ("switch_ns", "<=", 100),
    "switch_barrier_over_switch": ("switch_barrier_over_switch", ">=", 20),
    "idle_cpu_percent": ("idle_cpu_percent", "<=", 2),
    "slice_ns_4096": ("slice_ns_4096", "<=", 20000),
    "dispatch_ns": ("dispatch_ns", "<=", 50),
    "attn_plan_ns_4096": ("attn_plan_ns_4096", "<=", 20000),
    "lse_merge_bw_ratio": ("lse_merge_bw_ratio", ">=", 0.5),
    "reactor_sweep_ns_10k": ("reactor_sweep_ns_10k", "<=", 1000),
    "reactor_completion_10k_over_10": ("reactor_completion_10k_over_10", "<=", 2),
    "step_plan_ns": ("step_plan_ns", "<=", 20000),
    "step_host_overhead_us": ("step_host_overhead_us", "<=", 100),
    "step_gap_us": ("step_gap_us", "<=", 20),
    "step_gap_ratio": ("step_gap_ratio", ">=", 5),
    "tuner_regret": ("tuner_regret", ">=", 0.9),
}

# Figures of the example server (bench/server/server_bench.py), copied as they
# are: key -> description.
SERVER_KEYS = {
    "health_rps": "GET /health requests per second, 64 connections (wrk)",
    "server_tokens_per_s_1": "generated tokens per second, 1 client, 'small' model shape (server counter, steady window)",
    "server_tokens_per_s_64": "generated tokens per second, 64 concurrent clients, 'small' model shape (server counter)",
    "server_completed_tokens_per_s_1": "the same from wrk's completed answers, 1 client",
    "server_completed_tokens_per_s_64": "the same from wrk's completed answers, 64 clients (moves in waves of 64)",
    "server_batching_gain": "tokens/s at 64 clients over tokens/s at 1 client, 'small' model shape",
    "server_tokens_per_s_1_tiny": "generated tokens per second, 1 client, 'tiny' model shape",
    "server_tokens_per_s_64_tiny": "generated tokens per second, 64 concurrent clients, 'tiny' model shape",
    "server_batching_gain_tiny": "tokens/s at 64 clients over 1 client, 'tiny' shape (weights in cache)",
    "server_p99_ttft_ms": "time to first streamed token at 64 clients, p99",
    "server_median_ttft_ms": "time to first streamed token at 64 clients, median",
    "server_errors": "answers neither 200 nor 503, and socket errors, over every server run",
}
SERVER_TARGETS = {
    "health_rps": ("health_rps", ">=", 30000),
    "server_batching_gain": ("server_batching_gain", ">=", 8),
    "server_errors": ("server_errors", "<=", 0),
}

NS_PER_UNIT = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}

def base_name(entry):
    """The benchmark's name without arguments or options ("/real_time", ...)."""
    name = entry.get("run_name") or entry.get("name", "")
    name = name.split("/", 1)[0]
    # Old reports without run_type name aggregates "BM_x_median".
    if "run_type" not in entry:
        for suffix in ("_mean", "_median", "_stddev", "_cv"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
    return name


def aggregate_name(entry):
    if entry.get("run_type") == "aggregate":
        return entry.get("aggregate_name", "")
    if "run_type" not in entry:
        name = entry.get("name", "").split("/", 1)[0]
        for suffix in ("mean", "median", "stddev", "cv"):
            if name.endswith("_" + suffix):
                return suffix
    return None


def value_of(entry, field):
    if field in (REAL_TIME, CPU_TIME):
        unit = entry.get("time_unit", "ns")
        return float(entry[field]) * NS_PER_UNIT[unit]
    value = entry.get(field)
    return None if value is None else float(value)


def measure(benchmarks, name, field):
    """The median of `field` over the repetitions of benchmark `name`."""
    entries = [b for b in benchmarks if base_name(b) == name and not b.get("error_occurred")]
    medians = [b for b in entries if aggregate_name(b) == "median"]
    for b in medians:
        value = value_of(b, field)
        if value is not None:
            return value
    runs = [b for b in entries if aggregate_name(b) is None]
    values = [v for v in (value_of(b, field) for b in runs) if v is not None]
    return statistics.median(values) if values else None


def config_of(entry):
    """The arguments part of a benchmark's name ("N:2/compute:1/comm:1")."""
    name = entry.get("run_name") or entry.get("name", "")
    parts = name.split("/")[1:]
    return "/".join(p for p in parts if not p.startswith("iterations:") and p not in ("real_time",)
                    and not p.startswith("repeats:"))


def per_config(benchmarks, name, field):
    """{configuration: median of `field` over its repetitions} for `name`."""
    groups = {}
    for b in benchmarks:
        if base_name(b) != name or b.get("error_occurred"):
            continue
        groups.setdefault(config_of(b), []).append(b)
    result = {}
    for config, entries in groups.items():
        medians = [value_of(b, field) for b in entries if aggregate_name(b) == "median"]
        medians = [v for v in medians if v is not None]
        if medians:
            result[config] = medians[0]
            continue
        runs = [value_of(b, field) for b in entries if aggregate_name(b) is None]
        runs = [v for v in runs if v is not None]
        if runs:
            result[config] = statistics.median(runs)
    return result


def condense(values, how):
    if not values:
        return None
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return statistics.geometric_mean(values)


def machine_info():
    info = {
        "nproc": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": None,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["git_commit"] = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"],
            check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def summarize(report, server=None):
    benchmarks = report.get("benchmarks", [])
    summary = {}
    missing = []
    for key, (name, field) in TABLE.items():
        value = measure(benchmarks, name, field)
        if value is None:
            missing.append(key)
        else:
            summary[key] = value

    sweeps = {}
    for key, (name, field, how) in SWEEPS.items():
        values = per_config(benchmarks, name, field)
        value = condense(list(values.values()), how)
        if value is None:
            missing.append(key)
        else:
            summary[key] = value
            sweeps[key] = values
    for key, (num_name, den_name, field, how) in PAIRED.items():
        num = per_config(benchmarks, num_name, field)
        den = per_config(benchmarks, den_name, field)
        ratios = {c: num[c] / den[c] for c in num if c in den and den[c] != 0}
        value = condense(list(ratios.values()), how)
        if value is None:
            missing.append(key)
        else:
            summary[key] = value
            if how != "min":  # the per-configuration ratios are listed once
                sweeps[key] = ratios
    summary["per_configuration"] = sweeps

    for key, (num, den) in RATIOS.items():
        if num in summary and den in summary and summary[den] != 0:
            summary[key] = summary[num] / summary[den]

    if server is not None:
        for key in SERVER_KEYS:
            if server.get(key) is None:
                missing.append(key)
            else:
                summary[key] = server[key]

    targets = {}
    all_targets = dict(TARGETS)
    if server is not None:
        all_targets.update(SERVER_TARGETS)
    for key, (measured_key, op, bound) in all_targets.items():
        if measured_key not in summary:
            continue
        measured = summary[measured_key]
        met = measured <= bound if op == "<=" else measured >= bound
        targets[key] = {"target": bound, "compare": op, "measured": measured, "met": met}

    summary["targets"] = targets
    summary["missing"] = missing
    summary["machine"] = machine_info()
    context = report.get("context", {})
    summary["machine"]["benchmark_build_type"] = context.get("library_build_type")
    return summary


def main(argv):
    if len(argv) not in (3, 4):
        print(f"usage: {argv[0]} RAW_JSON SUMMARY_JSON [SERVER_JSON]", file=sys.stderr)
        return 2
    server = None
    if len(argv) == 4:
        try:
            with open(argv[3], encoding="utf-8") as f:
                server = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"{argv[0]}: {argv[3]}: {e}; the server figures are listed as missing", file=sys.stderr)
            server = {}
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        # Google Benchmark leaves the file empty when no benchmark matched.
        print(f"{argv[0]}: {argv[1]} is empty: no benchmark ran", file=sys.stderr)
        return 1
    try:
        report = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"{argv[0]}: {argv[1]} is not a Google Benchmark JSON report: {e}", file=sys.stderr)
        return 1
    summary = summarize(report, server)
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
