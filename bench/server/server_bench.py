#!/usr/bin/env python3
"""Benchmarks of cobatch_server on loopback, bounded in time.

    server_bench.py --server build/examples/server/cobatch_server --out build/bench/server.json

- health_rps: GET /health with wrk, 64 connections, 2 threads.
- server_batching_gain: generated tokens per second with 64 concurrent
  clients (wrk, non-streaming completions) over the same with 1 client
  (medians of 3 alternating rounds of each), on
  a second server running the reference model's 'small' shape (46 MB of
  weights). The default 'tiny' shape's weights stay in cache, so a lone
  decode costs what its arithmetic costs and batching has little to
  amortise; a real model's decode is bound by reading its weights, which the
  'small' shape reproduces. The tiny shape's gain is kept beside it
  (server_batching_gain_tiny).
- server_p99_ttft_ms: time to first streamed token at 64 concurrent
  streaming clients (an asyncio client on raw sockets, keep-alive), p99.
- server_errors: answers that are neither 200 nor 503, plus socket errors,
  over every run above.

Tokens per second are steady-state rates read from the server's own
cobatch_generated_tokens_total counter while wrk keeps the clients busy (see
tokens_per_second); wrk's count of completed answers is kept beside them.

Writes the figures as JSON for bench/summarize.py. Needs wrk and the
prometheus_client package (its parser reads /metrics; installed with pip
when missing, as the server's end-to-end test does).
"""

import argparse
import asyncio
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def ensure_prometheus_client():
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        print("installing prometheus_client with pip", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "prometheus_client"],
                       check=True, timeout=300)


def start_server(binary, args):
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    m = re.search(r"listening on http://[^:]+:(\d+) model=(\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server_bench: the server did not start: {line!r}")
    return proc, int(m.group(1)), m.group(2)


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def wrk(args, env=None, timeout=120):
    r = subprocess.run(["wrk", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"server_bench: wrk failed: {r.stderr}")
    return r.stdout


def health_rps(port, seconds):
    out = wrk(["-t2", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{port}/health"])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, errors, out


def generated_tokens(port):
    """The server's cobatch_generated_tokens_total counter, read from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cobatch_generated_tokens_total":
                return sample.value
    raise SystemExit("server_bench: /metrics has no cobatch_generated_tokens_total")


def tokens_per_second(port, model, clients, seconds, max_tokens, ramp=2.0):
    """Generated tokens per second under `clients` closed-loop wrk clients.

    Two figures. `tokens_per_s` is the steady rate: the server's generated-token
    counter read `ramp` seconds after wrk starts and again just before it
    stops. It counts tokens as the engine hands them over, so it does not
    depend on where request boundaries fall in the window. `completed_tokens_per_s`
    is what wrk's answers carried over its whole run: requests still running
    when wrk stops count for nothing, and 64 clients that start together also
    finish together, so that figure moves in steps of a whole wave of
    requests (up to a fifth of the rate in a 10 s window).
    """
    body = json.dumps({"model": model, "prompt": "Once upon a time",
                       "max_tokens": max_tokens, "temperature": 0})
    threads = min(2, clients)
    proc = subprocess.Popen(["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "60s",
                             "-s", os.path.join(HERE, "completions.lua"), f"http://127.0.0.1:{port}/v1/completions"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COBATCH_BENCH_BODY": body})
    started = time.monotonic()
    steady = None
    try:
        if seconds > ramp + 1.0:
            time.sleep(ramp)
            c0, t0 = generated_tokens(port), time.monotonic()
            time.sleep(max(0.0, started + seconds - 0.5 - time.monotonic()))
            c1, t1 = generated_tokens(port), time.monotonic()
            steady = (c1 - c0) / (t1 - t0)
        out, err = proc.communicate(timeout=seconds + 120)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise SystemExit(f"server_bench: wrk failed: {err}")
    m = re.search(r"COBATCH tokens=(\d+) errors=(\d+) overloaded=(\d+) socket_errors=(\d+) requests=(\d+) "
                  r"duration_us=(\d+)", out)
    if not m:
        raise SystemExit(f"server_bench: no COBATCH line from wrk:\n{out}")
    tokens, errors, overloaded, socket_errors, requests, duration_us = map(int, m.groups())
    completed = tokens / (duration_us / 1e6)
    return {"tokens_per_s": steady if steady is not None else completed, "completed_tokens_per_s": completed,
            "errors": errors + socket_errors, "overloaded": overloaded, "requests": requests}


async def stream_client(port, body, deadline, ttfts, tally):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                await reader.readexactly(length)
                tally["overloaded" if status == 503 else "errors"] += 1
                continue
            first = True
            while True:  # chunked body: size line, data, CRLF
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if first and b"data: {" in data:
                    ttfts.append(time.monotonic() - t0)
                    first = False
                if size == 0:
                    break
            tally["requests"] += 1
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        tally["errors"] += 1
        tally["last_error"] = repr(e)
    finally:
        writer.close()


def p99_ttft(port, model, clients, seconds, max_tokens):
    body = json.dumps({"model": model, "prompt": "Time to first token, measured. ", "max_tokens": max_tokens,
                       "temperature": 0.7, "stream": True}).encode()
    ttfts, tally = [], {"requests": 0, "errors": 0, "overloaded": 0}

    async def run():
        deadline = time.monotonic() + seconds
        await asyncio.wait_for(asyncio.gather(*(stream_client(port, body, deadline, ttfts, tally)
                                                for _ in range(clients))), timeout=seconds + 120)

    asyncio.run(run())
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None
    return {"p99_ms": p99 * 1e3 if p99 is not None else None,
            "median_ms": statistics.median(ttfts) * 1e3 if ttfts else None,
            "samples": len(ttfts), **tally}


def batching_gain(args):
    """Tokens/s at 64 clients over 1 client, on a server of the gain shape.

    The two loads alternate for --gain-rounds rounds and each side's figure is
    the median of its rounds: on a 2-core machine one 1-client run varies by
    a third from run to run (the BLAS threads, wrk and the server share the
    cores), which a single pair of runs would hand straight to the ratio.
    """
    proc, port, model = start_server(os.path.abspath(args.server),
                                     ["--max-queue", "1024", "--model-shape", args.gain_shape, *args.server_arg])
    result = {"server_gain_shape": args.gain_shape, "server_gain_max_tokens": args.gain_max_tokens,
              "server_gain_rounds": args.gain_rounds}
    try:
        # The tuner starts at its floor and climbs; let it settle first.
        warm = tokens_per_second(port, model, 64, 3, args.gain_max_tokens)
        runs = {1: [], 64: []}
        for _ in range(args.gain_rounds):
            for clients in (1, 64):
                runs[clients].append(tokens_per_second(port, model, clients, args.gain_seconds, args.gain_max_tokens))
        median = {c: statistics.median(r["tokens_per_s"] for r in runs[c]) for c in runs}
        completed = {c: statistics.median(r["completed_tokens_per_s"] for r in runs[c]) for c in runs}
        result["server_tokens_per_s_1"] = median[1]
        result["server_tokens_per_s_64"] = median[64]
        result["server_tokens_per_s_1_runs"] = [r["tokens_per_s"] for r in runs[1]]
        result["server_tokens_per_s_64_runs"] = [r["tokens_per_s"] for r in runs[64]]
        result["server_batching_gain"] = median[64] / median[1] if median[1] else None
        result["server_completed_tokens_per_s_1"] = completed[1]
        result["server_completed_tokens_per_s_64"] = completed[64]
        gain = result["server_batching_gain"]
        print(f"{args.gain_shape} shape: tokens/s 1 client {median[1]:.1f}, 64 clients {median[64]:.1f} "
              f"(medians of {args.gain_rounds}), gain {'none' if gain is None else f'{gain:.2f}'}; rounds: "
              f"{', '.join(f'{r:.0f}' for r in result['server_tokens_per_s_1_runs'])} and "
              f"{', '.join(f'{r:.0f}' for r in result['server_tokens_per_s_64_runs'])}", flush=True)
        every = [warm, *runs[1], *runs[64]]
        result["errors"] = sum(r["errors"] for r in every)
        result["overloaded"] = sum(r["overloaded"] for r in every)
    finally:
        result["server_gain_exit_status"] = stop_server(proc)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--gain-shape", default="small", help="model shape of the batching-gain server")
    ap.add_argument("--gain-seconds", type=int, default=8)
    ap.add_argument("--gain-rounds", type=int, default=3)
    ap.add_argument("--gain-max-tokens", type=int, default=64)
    args = ap.parse_args()
    ensure_prometheus_client()

    proc, port, model = start_server(os.path.abspath(args.server), ["--max-queue", "1024", *args.server_arg])
    result = {"server_args": args.server_arg, "seconds": args.seconds, "max_tokens": args.max_tokens}
    try:
        rps, health_errors, _ = health_rps(port, args.seconds)
        result["health_rps"] = rps
        print(f"health_rps            {rps:.0f} req/s (64 connections)", flush=True)
        one = tokens_per_second(port, model, 1, args.seconds, args.max_tokens)
        many = tokens_per_second(port, model, 64, args.seconds, args.max_tokens)
        print(f"tiny shape: tokens/s  1 client {one['tokens_per_s']:.1f}, 64 clients {many['tokens_per_s']:.1f}",
              flush=True)
        result["server_tokens_per_s_1_tiny"] = one["tokens_per_s"]
        result["server_tokens_per_s_64_tiny"] = many["tokens_per_s"]
        result["server_batching_gain_tiny"] = many["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else None
        errors, overloaded = one["errors"] + many["errors"], one["overloaded"] + many["overloaded"]
        ttft = p99_ttft(port, model, 64, args.seconds, args.max_tokens)
        result["server_p99_ttft_ms"] = ttft["p99_ms"]
        result["server_median_ttft_ms"] = ttft["median_ms"]
        result["server_ttft_samples"] = ttft["samples"]
        print(f"ttft at 64 clients    p99 {ttft['p99_ms']:.1f} ms, median {ttft['median_ms']:.1f} ms "
              f"({ttft['samples']} requests)", flush=True)
        errors += health_errors + ttft["errors"]
        overloaded += ttft["overloaded"]
    finally:
        result["server_exit_status"] = stop_server(proc)

    gain = batching_gain(args)
    result["server_errors"] = errors + gain.pop("errors")
    result["server_overloaded"] = overloaded + gain.pop("overloaded")
    result.update(gain)
    print(f"errors                {result['server_errors']} (503s: {result['server_overloaded']})", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return 0 if result["server_exit_status"] == 0 and result["server_gain_exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
