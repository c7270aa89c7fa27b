#!/usr/bin/env python3
"""Dispatch benchmark for a Redis-coordinated runner, a peer design to muster's master/worker dispatch.

Design: the producer (playing the master) LPUSHes task ids onto a Redis list; 8 consumer
processes (multiprocessing, spawn) BRPOP from it, "run" each task as a no-op and LPUSH a
completion (the task id) onto a results list; the producer BRPOPs the results. Every
message is one round trip to Redis (no pipelining, no batching).

  throughput  --tasks independent tasks: the producer LPUSHes them all one by one, then
              BRPOPs every result. tasks/s = tasks / (first LPUSH -> last result
              received). Also the producer's CPU seconds per 1,000 tasks
              (time.process_time() delta of the producer process only).
  chain       --chain steps: the producer pushes task i+1 only after it has received the
              result of task i (one full round trip per step, like a dependency chain).
              Per-step latency = push of i -> receipt of result i, measured by the
              producer with time.perf_counter_ns(); p50/p99 and mean = wall / steps, in us.

Each scenario runs once as warm-up, then --runs times. Without --redis-url the script
starts its own `redis-server --port <free port> --save '' --appendonly no` on 127.0.0.1
and stops it at the end; `--redis-url` alone means redis://127.0.0.1:6379/0.
Prints exactly one JSON line per scenario on stdout; everything else goes to stderr.
Requires: pip install -r bench/peers/requirements.txt, and the redis-server binary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid

N_CONSUMERS = 8
DEFAULT_URL = "redis://127.0.0.1:6379/0"
RUN_TIMEOUT_S = 100.0  # hard cap per run: a lost message must not hang the benchmark
STOP = b"__stop__"


def log(msg: str) -> None:
    print(f"[redis_queue] {msg}", file=sys.stderr, flush=True)


# --- consumer (worker) process ---

def consumer(url: str, tasks_key: str, results_key: str, ready) -> None:
    import redis

    r = redis.Redis.from_url(url)
    r.ping()
    ready.set()
    while True:
        item = r.brpop(tasks_key, timeout=0)  # blocks until a task arrives
        if item is None:
            continue
        task_id = item[1]
        if task_id == STOP:
            return
        # "run" the task: a no-op. Then report its completion.
        r.lpush(results_key, task_id)


# --- redis-server management ---

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (Debian package redis-server), and no --redis-url given")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--daemonize", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with {proc.returncode}")
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise SystemExit("redis-server did not come up within 10s")
            time.sleep(0.05)
    log(f"started redis-server pid {proc.pid} on 127.0.0.1:{port}")
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log(f"stopped redis-server pid {proc.pid}")


# --- helpers ---

def percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    if len(sorted_vals) == 1:
        return float(sorted_vals[0])
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summary(vals: list[float], ndigits: int = 1) -> dict:
    return {
        "median": round(statistics.median(vals), ndigits),
        "min": round(min(vals), ndigits),
        "max": round(max(vals), ndigits),
    }


def brpop_or_fail(r, key: str, deadline: float):
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"run exceeded {RUN_TIMEOUT_S:.0f}s")
    item = r.brpop(key, timeout=max(1, int(left)))
    if item is None:
        raise TimeoutError(f"no result within {RUN_TIMEOUT_S:.0f}s")
    return item[1]


# --- scenarios (the producer plays the master) ---

def run_throughput(r, keys: dict, n_tasks: int) -> dict:
    tasks_key, results_key = keys["tasks"], keys["results"]
    assert r.llen(tasks_key) == 0 and r.llen(results_key) == 0
    ids = [str(i).encode() for i in range(n_tasks)]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    c0 = time.process_time()
    t0 = time.perf_counter()
    for tid in ids:
        r.lpush(tasks_key, tid)
    for _ in range(n_tasks):
        brpop_or_fail(r, results_key, deadline)
    t1 = time.perf_counter()
    c1 = time.process_time()
    wall = t1 - t0
    return {
        "tasks_per_s": round(n_tasks / wall, 1),
        "wall_s": round(wall, 3),
        "producer_cpu_s_per_1k": round((c1 - c0) / (n_tasks / 1000.0), 4),
    }


def run_chain(r, keys: dict, n_steps: int) -> dict:
    tasks_key, results_key = keys["tasks"], keys["results"]
    assert r.llen(tasks_key) == 0 and r.llen(results_key) == 0
    lat_us = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n_steps):
        tid = str(i).encode()
        s = time.perf_counter_ns()
        r.lpush(tasks_key, tid)
        got = brpop_or_fail(r, results_key, deadline)
        lat_us.append((time.perf_counter_ns() - s) / 1000.0)
        if got != tid:
            raise RuntimeError(f"chain step {i}: got result {got!r}")
    t1 = time.perf_counter()
    c1 = time.process_time()
    lat_us.sort()
    wall = t1 - t0
    return {
        "p50": round(percentile(lat_us, 50), 1),
        "p99": round(percentile(lat_us, 99), 1),
        "mean": round(wall / n_steps * 1e6, 1),
        "wall_s": round(wall, 3),
        "producer_cpu_s_per_1k": round((c1 - c0) / (n_steps / 1000.0), 4),
    }


def scenario(r, keys, name: str, fn, size: int, runs: int) -> tuple[list[dict], float]:
    t_start = time.perf_counter()
    log(f"{name}: warm-up (size {size})")
    log(f"{name}: warm-up {fn(r, keys, size)}")
    results = []
    for i in range(runs):
        res = fn(r, keys, size)
        log(f"{name}: run {i + 1}/{runs} {res}")
        results.append(res)
    return results, time.perf_counter() - t_start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", nargs="?", const=DEFAULT_URL, default=None,
                    help=f"use this Redis server (bare flag: {DEFAULT_URL}); "
                         "omitted: start a private redis-server on a free port")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per scenario after one warm-up (default 3)")
    ap.add_argument("--tasks", type=int, default=10_000, help="tasks in the throughput scenario (default 10000)")
    ap.add_argument("--chain", type=int, default=2_000, help="steps in the chain scenario (default 2000)")
    ap.add_argument("--scenario", choices=["all", "throughput", "chain"], default="all")
    args = ap.parse_args()
    if args.runs < 1 or args.tasks < 1 or args.chain < 1:
        ap.error("--runs, --tasks and --chain must be >= 1")

    import redis

    server = None
    url = args.redis_url
    if url is None:
        server, url = start_server()
    ctx = mp.get_context("spawn")
    procs: list = []
    r = None
    prefix = f"muster-bench:{uuid.uuid4().hex[:12]}"
    keys = {"tasks": f"{prefix}:tasks", "results": f"{prefix}:results"}
    try:
        r = redis.Redis.from_url(url)
        try:
            info = r.info("server")
        except redis.exceptions.ConnectionError as e:
            raise SystemExit(f"cannot reach Redis at {url}: {e}") from None
        r.delete(keys["tasks"], keys["results"])
        t0 = time.perf_counter()
        readies = []
        for _ in range(N_CONSUMERS):
            ready = ctx.Event()
            p = ctx.Process(target=consumer, args=(url, keys["tasks"], keys["results"], ready), daemon=True)
            p.start()
            procs.append(p)
            readies.append(ready)
        for ev in readies:
            if not ev.wait(60):
                raise RuntimeError("consumer did not start within 60s")
        log(f"{N_CONSUMERS} consumer processes up in {time.perf_counter() - t0:.1f}s "
            f"(redis-server {info.get('redis_version')}, redis-py {redis.__version__})")

        common = {
            "peer": "redis-queue",
            "workers": N_CONSUMERS,
            "versions": {"redis-server": info.get("redis_version"), "redis-py": redis.__version__},
            "cpus": os.cpu_count(),
            "server": "private redis-server (started by this script)" if server else "external (--redis-url)",
        }
        if args.scenario in ("all", "throughput"):
            runs, took = scenario(r, keys, "throughput", run_throughput, args.tasks, args.runs)
            out = {
                **common,
                "scenario": "throughput",
                "unit": "tasks/s",
                "tasks": args.tasks,
                **summary([x["tasks_per_s"] for x in runs]),
                "producer_cpu_s_per_1k": summary([x["producer_cpu_s_per_1k"] for x in runs], 4),
                "cpu_note": "time.process_time() of the producer process only (the master's role); "
                            "consumers and redis-server not included",
                "method": "LPUSH each task id (one round trip each), then BRPOP each result; "
                          "wall from first LPUSH to last result received",
                "runs": runs,
                "scenario_wall_s": round(took, 1),
            }
            print(json.dumps(out), flush=True)

        if args.scenario in ("all", "chain"):
            runs, took = scenario(r, keys, "chain", run_chain, args.chain, args.runs)
            out = {
                **common,
                "scenario": "chain",
                "unit": "us/step",
                "steps": args.chain,
                "p50": summary([x["p50"] for x in runs]),
                "p99": summary([x["p99"] for x in runs]),
                "mean": summary([x["mean"] for x in runs]),
                "method": "producer-side latency from LPUSH of task i to BRPOP of result i; "
                          "task i+1 pushed only after result i; mean = wall / steps",
                "runs": runs,
                "scenario_wall_s": round(took, 1),
            }
            print(json.dumps(out), flush=True)
    finally:
        if r is not None and procs:
            try:
                for _ in procs:
                    r.lpush(keys["tasks"], STOP)
            except Exception as e:  # noqa: BLE001
                log(f"could not send stop: {e!r}")
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        if r is not None:
            try:
                r.delete(keys["tasks"], keys["results"])
            except Exception:  # noqa: BLE001
                pass
            r.close()
        if server is not None:
            stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
