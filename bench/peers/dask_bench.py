#!/usr/bin/env python3
"""Dispatch benchmark for Dask distributed, a peer of muster's master/worker dispatch.

Starts LocalCluster(n_workers=8, threads_per_worker=1, processes=True) with the
dashboard off, and runs two scenarios, each once as warm-up and then --runs times:

  throughput  --tasks independent no-op tasks (pure=False, so none are deduplicated),
              all handed to the client at once; tasks/s = tasks / (first submit ->
              all done). Also CPU seconds per 1,000 tasks of the client process
              (which hosts the scheduler; see "cpu_note" in the output).
  chain       --chain tasks, each submitted with the previous task's future as its
              argument. Each task records time.time_ns() when it starts (workers are
              separate processes on the same machine, so a wall clock is used);
              per-step latency = delta between consecutive tasks' start times.
              Reports p50/p99 of those deltas and mean = wall / steps, in us.

Prints exactly one JSON line per scenario on stdout; everything else goes to stderr.
Requires: pip install -r bench/peers/requirements.txt
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
import warnings

N_WORKERS = 8
RUN_TIMEOUT_S = 100.0  # hard cap per run, so a wedged cluster cannot hang the benchmark

CPU_NOTE = (
    "LocalCluster runs the scheduler inside this (client) process, on the event-loop "
    "thread it shares with the client's comms; cpu_s_per_1k is time.process_time() of "
    "the whole process (scheduler + client, all threads), loop_thread_cpu_s_per_1k is "
    "the CPU time of that event-loop thread only (scheduler + client I/O). The 8 worker "
    "processes are not included; worker_cpu_s_per_1k sums their process CPU time."
)


def log(msg: str) -> None:
    print(f"[dask_bench] {msg}", file=sys.stderr, flush=True)


# --- task functions (pickled by value by cloudpickle, since they live in __main__) ---

def noop(x):
    return x


def chain_step(_prev):
    # Wall clock: the tasks run in different worker processes on the same machine.
    return time.time_ns()


def _proc_cpu() -> float:
    return time.process_time()


def _loop_thread_cpu(dask_scheduler=None) -> float:
    # Runs synchronously on the scheduler's event-loop thread.
    return time.thread_time()


def _scheduler_task_count(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


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
    frac = pos - lo
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * frac


def summary(vals: list[float], ndigits: int = 1) -> dict:
    return {
        "median": round(statistics.median(vals), ndigits),
        "min": round(min(vals), ndigits),
        "max": round(max(vals), ndigits),
    }


def workers_cpu(client) -> float:
    return sum(client.run(_proc_cpu).values())


def wait_scheduler_idle(client, timeout: float = 30.0) -> None:
    """Wait until the scheduler has forgotten every task of the previous run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.run_on_scheduler(_scheduler_task_count) == 0:
            return
        time.sleep(0.05)
    log("warning: scheduler still holds tasks from the previous run")


# --- scenarios ---

def run_throughput(client, n_tasks: int) -> dict:
    from distributed import wait

    wait_scheduler_idle(client)
    w0 = workers_cpu(client)
    l0 = client.run_on_scheduler(_loop_thread_cpu)
    c0 = time.process_time()
    t0 = time.perf_counter()
    futures = client.map(noop, range(n_tasks), pure=False)
    done, not_done = wait(futures, timeout=RUN_TIMEOUT_S, return_when="ALL_COMPLETED")
    t1 = time.perf_counter()
    c1 = time.process_time()
    l1 = client.run_on_scheduler(_loop_thread_cpu)
    w1 = workers_cpu(client)
    if not_done:
        raise RuntimeError(f"{len(not_done)} tasks not done")
    errors = sum(1 for f in futures if f.status != "finished")
    if errors:
        raise RuntimeError(f"{errors} tasks did not finish cleanly")
    del futures, done, not_done
    wall = t1 - t0
    k = n_tasks / 1000.0
    return {
        "tasks_per_s": round(n_tasks / wall, 1),
        "wall_s": round(wall, 3),
        "cpu_s_per_1k": round((c1 - c0) / k, 4),
        "loop_thread_cpu_s_per_1k": round((l1 - l0) / k, 4),
        "worker_cpu_s_per_1k": round((w1 - w0) / k, 4),
    }


def run_chain(client, n_steps: int) -> dict:
    wait_scheduler_idle(client)
    c0 = time.process_time()
    t0 = time.perf_counter()
    futures = []
    prev = None
    for _ in range(n_steps):
        prev = client.submit(chain_step, prev, pure=False)
        futures.append(prev)
    starts = client.gather(futures)  # returns once the last step has finished
    t1 = time.perf_counter()
    c1 = time.process_time()
    del futures, prev
    deltas_us = sorted((b - a) / 1000.0 for a, b in zip(starts, starts[1:]))
    wall = t1 - t0
    return {
        "p50": round(percentile(deltas_us, 50), 1),
        "p99": round(percentile(deltas_us, 99), 1),
        "mean": round(wall / n_steps * 1e6, 1),
        "wall_s": round(wall, 3),
        "cpu_s_per_1k": round((c1 - c0) / (n_steps / 1000.0), 4),
    }


def with_timeout(fn, *args):
    """Run fn(*args) in a thread and give up after RUN_TIMEOUT_S (chain gather has no timeout arg)."""
    box: dict = {}

    def target():
        try:
            box["ok"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["err"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(RUN_TIMEOUT_S + 5)
    if th.is_alive():
        raise TimeoutError(f"{fn.__name__} exceeded {RUN_TIMEOUT_S:.0f}s")
    if "err" in box:
        raise box["err"]
    return box["ok"]


def scenario(client, name: str, fn, size: int, runs: int) -> tuple[list[dict], float]:
    t_start = time.perf_counter()
    log(f"{name}: warm-up (size {size})")
    warm = with_timeout(fn, client, size)
    log(f"{name}: warm-up {warm}")
    results = []
    for i in range(runs):
        r = with_timeout(fn, client, size)
        log(f"{name}: run {i + 1}/{runs} {r}")
        results.append(r)
    return results, time.perf_counter() - t_start


def silence() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by spawned workers
    for name in ("distributed", "dask", "tornado", "asyncio", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="measured runs per scenario after one warm-up (default 3)")
    ap.add_argument("--tasks", type=int, default=10_000, help="tasks in the throughput scenario (default 10000)")
    ap.add_argument("--chain", type=int, default=2_000, help="steps in the chain scenario (default 2000)")
    ap.add_argument("--scenario", choices=["all", "throughput", "chain"], default="all")
    args = ap.parse_args()
    if args.runs < 1 or args.tasks < 1 or args.chain < 2:
        ap.error("--runs and --tasks must be >= 1, --chain >= 2")

    silence()
    import dask
    import distributed
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=N_WORKERS,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    client = Client(cluster)
    client.wait_for_workers(N_WORKERS, timeout=60)
    log(f"cluster of {N_WORKERS} worker processes up in {time.perf_counter() - t0:.1f}s "
        f"(dask {dask.__version__}, distributed {distributed.__version__})")

    common = {
        "peer": "dask",
        "workers": N_WORKERS,
        "versions": {"dask": dask.__version__, "distributed": distributed.__version__},
        "cpus": os.cpu_count(),
    }
    try:
        if args.scenario in ("all", "throughput"):
            runs, took = scenario(client, "throughput", run_throughput, args.tasks, args.runs)
            rates = [r["tasks_per_s"] for r in runs]
            out = {
                **common,
                "scenario": "throughput",
                "unit": "tasks/s",
                "tasks": args.tasks,
                **summary(rates),
                "cpu_s_per_1k": summary([r["cpu_s_per_1k"] for r in runs], 4),
                "loop_thread_cpu_s_per_1k": summary([r["loop_thread_cpu_s_per_1k"] for r in runs], 4),
                "worker_cpu_s_per_1k": summary([r["worker_cpu_s_per_1k"] for r in runs], 4),
                "cpu_note": CPU_NOTE,
                "submit": "client.map(noop, range(tasks), pure=False); distributed.wait(all)",
                "runs": runs,
                "scenario_wall_s": round(took, 1),
            }
            print(json.dumps(out), flush=True)

        if args.scenario in ("all", "chain"):
            runs, took = scenario(client, "chain", run_chain, args.chain, args.runs)
            out = {
                **common,
                "scenario": "chain",
                "unit": "us/step",
                "steps": args.chain,
                "p50": summary([r["p50"] for r in runs]),
                "p99": summary([r["p99"] for r in runs]),
                "mean": summary([r["mean"] for r in runs]),
                "method": "deltas of consecutive task start times (time.time_ns() in the task); "
                          "mean = wall(first submit -> last result) / steps",
                "runs": runs,
                "scenario_wall_s": round(took, 1),
            }
            print(json.dumps(out), flush=True)
    finally:
        t_close = time.perf_counter()
        try:
            client.close(timeout=30)
            cluster.close(timeout=30)
        except Exception as e:  # noqa: BLE001 - shutdown noise must not hide results
            log(f"shutdown: {e!r}")
        log(f"cluster closed in {time.perf_counter() - t_close:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
