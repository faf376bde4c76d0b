"""Throughput across cluster sizes, through the users' own commands.

For each worker count N: a simulated multi-node cluster on this machine
(egecmp_ray.local_cluster: a head and N one-CPU nodes of real `ray start` processes), then
`ray job submit -- python jobs/preprocess.py` on N CPU-group nodes (rows/s) and
`jobs/pretrain.py --workers N` on N GPU-group nodes (samples/s). With --dashboard URL the jobs
go to that real cluster instead (its groups as deploy/egecmp-cluster.yaml names them): pretrain
at each N, preprocess once on whatever the cluster has (it is not resized here). Serving: for
each replica count R, R GPU-group nodes each hold one encoder replica of `egecmp serve
--detach` and a closed-loop client drives /search at 1, 8, 32 clients (QPS; p50/p95/p99 vs
load). Then the cluster autoscaler: Ray's fake multi-node provider adds GPU-group nodes when
Serve asks for encoder replicas that do not fit and removes them when idle (a node-count
trace).

Writes results/bench-<date>.json, results/bench-<date>.md and PNG plots (throughput vs
workers with the ideal-linear line; latency percentiles vs load; the autoscaling trace).
One host bounds the simulated cluster: N nodes share this machine's cores, so the figures
show the system's overheads and placement at N, not what N machines would do.

    python benchmarks/run_all.py --workers 1,2 --replicas 1,2   # egecmp bench cluster
"""

from __future__ import annotations

import atexit
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egecmp_ray.benchmarking import bench_parser, machine_info  # noqa: E402
from egecmp_ray.local_cluster import LocalCluster, free_port  # noqa: E402

CPU_GROUP = {"egecmp_cpu": 1000}
GPU_GROUP = {"egecmp_gpu": 1000}
GROUPS = ["cluster.cpu_resource=egecmp_cpu", "cluster.gpu_resource=egecmp_gpu"]


def _submit(cluster: LocalCluster, *entry: str) -> str:
    t0 = time.perf_counter()
    r = cluster.submit(["python", *entry], str(REPO), timeout_s=3600)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(entry[:1])} failed:\n{out[-4000:]}")
    print(f"  {entry[0]}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


class RemoteCluster:
    """A running cluster reached through its job server (``--dashboard``); never resized."""

    def __init__(self, dashboard: str):
        self.dashboard = dashboard
        self.ray = str(Path(sys.executable).parent / "ray")

    def submit(self, entrypoint, working_dir: str, timeout_s: float = 3600):
        return subprocess.run([self.ray, "job", "submit", "--address", self.dashboard,
                               "--working-dir", working_dir, "--", *entrypoint],
                              capture_output=True, text=True, timeout=timeout_s, cwd=working_dir)

    def __enter__(self) -> "RemoteCluster":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _cluster(remote: str | None, head_cpus: float, nodes: int, group: dict,
             head_group: dict | None = None):
    if remote:
        return RemoteCluster(remote)
    cluster = LocalCluster(head_cpus=head_cpus, head_resources=head_group).start_head()
    try:
        for i in range(nodes):
            cluster.add_node(f"node{i}", 1, group)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def preprocess_rate(synth: Path, work: Path, nodes: int, preset: str,
                    remote: str | None = None) -> dict:
    """rows/s of the preprocess pipeline (its own timer: cluster and job start excluded)."""
    out = work / f"prep-{nodes}"
    shutil.rmtree(out, ignore_errors=True)
    with _cluster(remote, 0, nodes, CPU_GROUP) as cluster:
        _submit(cluster, "jobs/preprocess.py", "--input", str(synth), "--out", str(out),
                "--preset", preset, *GROUPS)
    manifest = json.loads((out / "manifest.json").read_text())
    return {"stage": "preprocess", "workers": nodes, "rows": manifest["rows_in"],
            "seconds": manifest["elapsed_s"], "throughput": manifest["rows_per_s"],
            "unit": "rows/s"}


def train_rate(prep: Path, work: Path, workers: int, preset: str, steps: int,
               remote: str | None = None) -> dict:
    """samples/s of Ray Train + DeepSpeed at ``workers`` (median logged window after the
    first, which holds start-up), one worker a GPU-group node; the head's CPU reads data."""
    out = work / f"run-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    # The head stands in for the CPU group: the trainer's Ray Data readers run there.
    with _cluster(remote, 1, workers, GPU_GROUP, head_group=CPU_GROUP) as cluster:
        _submit(cluster, "jobs/pretrain.py", "--data", str(prep), "--out", str(out),
                "--preset", preset, "--workers", str(workers), f"train.max_steps={steps}",
                "train.log_every_steps=4", f"train.checkpoint_every_steps={10 * steps}",
                "train.cpus_per_worker=1", *GROUPS)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [x for x in lines if "step_time_s" in x][1:]
    step_s = statistics.median(x["step_time_s"] for x in windows)
    # samples over all workers per step (micro batch x workers x accumulation)
    samples_per_step = json.loads((out / "pretrain.json").read_text())["samples"] / steps
    shutil.rmtree(out, ignore_errors=True)
    return {"stage": "pretrain", "workers": workers, "step_s": round(step_s, 4),
            "throughput": round(samples_per_step / step_s, 2), "unit": "samples/s"}


def serve_rate(model_dir: Path, db: Path, replicas: int, preset: str, bodies: list[dict],
               clients: list[int], seconds: float) -> list[dict]:
    """/search QPS and latency percentiles with ``replicas`` encoder replicas, one per GPU-group
    node (1 CPU each), at each closed-loop client count; the proxy, ingress and searcher ride on
    the head (they reserve no CPU). The load generator runs here, on the same host."""
    from egecmp_ray.serve.loadgen import run_load

    rows = []
    with _cluster(None, 0, replicas, GPU_GROUP) as cluster:
        url = cluster.serve(model_dir, db, free_port(), replicas, "--preset", preset, GROUPS[1])
        for n in clients:
            run_load(url, bodies, n, 1.0)  # warm the path at this concurrency
            r = run_load(url, bodies, n, seconds)
            rows.append({"stage": "serve", "workers": replicas, "clients": n,
                         "throughput": r["qps"], "unit": "QPS",
                         **{k: r[k] for k in ("p50_ms", "p95_ms", "p99_ms", "errors_5xx")}})
            print(rows[-1], flush=True)
        cluster.serve_shutdown()
    return rows


def autoscale_trace(model_dir: Path, db: Path, preset: str, seconds_idle: float = 10
                    ) -> list[dict]:
    """Node count over time while Serve asks for two encoder replicas the head cannot hold,
    then after the app is shut down (the fake multi-node provider is the cloud)."""
    trace: list[dict] = []
    gpu = {"gpu_workers": {"resources": {"CPU": 1, **GPU_GROUP}, "max_workers": 2}}
    with LocalCluster(autoscaling=gpu, idle_timeout_s=seconds_idle) as cluster:
        t0 = time.monotonic()

        def sample(event: str = "") -> None:
            trace.append({"t_s": round(time.monotonic() - t0, 1),
                          "nodes": len(cluster.alive_nodes()), "event": event})

        def sample_until(done, timeout_s: float, every_s: float = 1.0) -> None:
            deadline = time.monotonic() + timeout_s
            while not done() and time.monotonic() < deadline:
                sample()
                time.sleep(every_s)

        sample("serve asks for 2 encoder replicas")
        deployed = threading.Event()
        sampler = threading.Thread(target=sample_until, args=(deployed.is_set, 600))
        sampler.start()
        try:
            cluster.serve(model_dir, db, free_port(), 2, "--preset", preset, GROUPS[1])
        finally:
            deployed.set()
            sampler.join()
        sample("serve ready")
        sample_until(lambda: len(cluster.alive_nodes()) >= 3, 30)
        cluster.serve_shutdown()
        sample("serve shut down")
        sample_until(lambda: len(cluster.alive_nodes()) <= 1, 120)
        sample("idle nodes removed" if len(cluster.alive_nodes()) <= 1 else "gave up waiting")
    return trace


def plots(out: Path, stamp: str, rows: list[dict], trace: list[dict], note: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out / f"bench-{stamp}-{name}.png"
        fig.savefig(path, dpi=100)
        made.append(path.name)
        plt.close(fig)

    stages = [s for s in ("preprocess", "pretrain", "serve") if any(r["stage"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        scaled = _scaled(rows, stage)  # smallest count first
        xs, ys = [r["workers"] for r in scaled], [r["throughput"] for r in scaled]
        ax.plot(xs, ys, "o-", label="measured")
        ax.plot(xs, [ys[0] * x / xs[0] for x in xs], "--", label="ideal linear")
        ax.set_xlabel("encoder replicas (nodes)" if stage == "serve" else "workers (nodes)")
        ax.set_ylabel(scaled[0]["unit"])
        ax.set_title(stage if stage != "serve" else
                     f"serve /search at {scaled[0]['clients']} clients")
        ax.set_xticks(xs)
        ax.legend()
    fig.suptitle(note, fontsize=8)
    save(fig, "throughput")
    serve_rows = [r for r in rows if r["stage"] == "serve" and r.get("p50_ms")]
    if serve_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        styles = itertools.cycle(("-", "--", ":", "-."))
        for replicas, style in zip(sorted({r["workers"] for r in serve_rows}), styles):
            for pct, colour in (("p50_ms", "C0"), ("p95_ms", "C1"), ("p99_ms", "C2")):
                pts = sorted((r["clients"], r[pct]) for r in serve_rows if r["workers"] == replicas)
                ax.plot(*zip(*pts), "o" + style, color=colour,
                        label=f"{pct[:-3]}, {replicas} replica{'s' if replicas > 1 else ''}")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("latency (ms)")
        ax.set_title("/search latency vs load")
        ax.legend(fontsize=7)
        save(fig, "latency")
    if trace:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.step([t["t_s"] for t in trace], [t["nodes"] - 1 for t in trace], where="post")
        for t in trace:
            if t["event"]:
                ax.annotate(t["event"], (t["t_s"], t["nodes"] - 1), fontsize=7, rotation=20)
        ax.set_xlabel("seconds")
        ax.set_ylabel("worker nodes")
        ax.set_title("cluster autoscaling (fake multi-node provider)")
        save(fig, "autoscale")
    return made


def _scaled(rows: list[dict], stage: str) -> list[dict]:
    """The rows of ``stage`` that scaling compares, smallest count first (serve: at its
    highest client count)."""
    mine = [r for r in rows if r["stage"] == stage]
    top = max((r.get("clients") or 0 for r in mine), default=0)
    return sorted((r for r in mine if (r.get("clients") or 0) == top), key=lambda r: r["workers"])


def _egecmp(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "egecmp_ray", *args, "--log-level", "WARNING"],
                   check=True, cwd=str(REPO))


def main() -> None:
    parser = bench_parser(__doc__, config_help="ignored: presets are fixed so sizes compare")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--replicas", default="1,2",
                        help="encoder replica counts for serving, comma-separated ('' skips)")
    parser.add_argument("--clients", default="1,8,32",
                        help="closed-loop client counts at each replica count")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of load a point [10; quick 3]")
    parser.add_argument("--no-autoscale", action="store_true", help="skip the autoscaling trace")
    parser.add_argument("--dashboard", default=None,
                        help="a real cluster's job server (http://head:8265) instead of the "
                             "simulated one; --work must then be storage its nodes reach "
                             "(serving and the autoscaling trace need the simulated cluster)")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    replicas = [int(x) for x in args.replicas.split(",") if x] if not args.dashboard else []
    clients = [int(x) for x in args.clients.split(",")]
    preset, rows, steps = ("tiny", 600, 8) if args.quick else ("small", 20_000, 24)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-all-"))
    if not args.work:  # a temp dir: gone however the run ends
        atexit.register(shutil.rmtree, work, True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    synth = work / "synth"
    if not (synth / "manifest.json").is_file():
        _egecmp("synth", "--rows", str(rows), "--out", str(synth), "--preset", preset)
    results = []
    for n in counts[:1] if args.dashboard else counts:
        print(f"preprocess on {n} CPU-group node(s)", flush=True)
        results.append(preprocess_rate(synth, work, n, preset, args.dashboard))
        print(results[-1], flush=True)
    prep = work / f"prep-{counts[0]}"
    for n in counts:
        print(f"pretrain with {n} worker(s)", flush=True)
        results.append(train_rate(prep, work, n, preset, steps, args.dashboard))
        print(results[-1], flush=True)
    trace: list[dict] = []
    if replicas or not (args.no_autoscale or args.dashboard):
        # An index to serve: a briefly trained model (speed does not depend on the weights).
        model, db = work / "model-run" / "model", work / "items.db"
        _egecmp("pretrain", "--data", str(prep), "--out", str(work / "model-run"), "--preset",
                preset, "--max-steps", "2")
        _egecmp("index", "--model", str(model), "--data", str(synth), "--milvus-uri", str(db),
                "--preset", preset)
        from egecmp_ray.serve.tour import sample_rows

        bodies = [{"text": r["title"], "top_k": 10}
                  for r in sample_rows(str(synth / "query"), 200)]
        for n in replicas:
            print(f"serve with {n} encoder replica(s)", flush=True)
            results += serve_rate(model, db, n, preset, bodies, clients, seconds)
        if not (args.no_autoscale or args.dashboard):
            print("autoscaling trace", flush=True)
            trace = autoscale_trace(model, db, preset)
    for stage in ("preprocess", "pretrain", "serve"):
        scaled = _scaled(results, stage)
        for r in scaled:
            r["speedup"] = round(r["throughput"] / scaled[0]["throughput"], 3)
            r["efficiency"] = round(r["speedup"] * scaled[0]["workers"] / r["workers"], 3)
    machine = machine_info()
    for r in results:  # what each row ran on
        r["machine"] = (f"{machine['cpus']}-CPU host, GPU {machine['gpu']}, head + "
                        f"{r['workers']} x 1-CPU nodes" if not args.dashboard else
                        f"cluster at {args.dashboard}")
    note = (f"the cluster at {args.dashboard} (machine figures are the submitting host's)"
            if args.dashboard else
            f"simulated multi-node cluster on one {machine['cpus']}-CPU host "
            f"(GPU: {machine['gpu']}): N nodes share its cores")
    machine["node_count"] = {"simulated": not args.dashboard, "worker_nodes": counts,
                             "encoder_replica_nodes": replicas,
                             "cpus_per_node": None if args.dashboard else 1,
                             "host_cpus": machine["cpus"]}
    stamp = time.strftime("%Y-%m-%d")
    made = plots(out, stamp, results, trace, note)
    payload = {"name": "cluster sizes", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": machine, "preset": preset, "rows": results,
               "autoscale_trace": trace, "plots": made, "note": note}
    (out / f"bench-{stamp}.json").write_text(json.dumps(payload, indent=2))
    columns = ["stage", "workers", "clients", "throughput", "unit", "speedup", "efficiency",
               "p50_ms", "p99_ms", "machine"]
    lines = [f"# Throughput across cluster sizes ({stamp})", "",
             f"Machine: {machine['cpus']} CPUs, {machine['memory_gb']} GiB, GPU: "
             f"{machine['gpu']}; " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
             + f"; preset {preset}. {note}. Workers = nodes of the stage's group (serve: "
               "encoder replicas, one a node); speedup and efficiency against the smallest "
               "count (serve: at the highest client count).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in results]
    if trace:
        peak = max(t["nodes"] for t in trace) - 1
        up = next((t["t_s"] for t in trace if t["nodes"] - 1 == peak), None)
        down = next((t["t_s"] for t in reversed(trace) if t["event"] == "serve shut down"), None)
        gone = next((t["t_s"] for t in trace if t["event"] == "idle nodes removed"), None)
        lines += ["", f"Autoscaling: 0 -> {peak} worker nodes {up} s after Serve asked; back "
                      f"to 0 at {gone} s (shut down at {down} s, idle timeout 10 s)."]
    lines += ["", "Plots: " + ", ".join(made)]
    (out / f"bench-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()
