"""The bridge's OTLP receiver under an Airflow-shaped load, beside the statsd path on the same shape.

    python bench/otlp_load.py [--size 2000x10] [--seconds 60] [--interval 10] [--task-runs 50]
                              [--saturate 30] [--statsd-rate 50000]

The shape (2,000 DAGs x 10 tasks by default) is what Airflow 3.3.2 emits, as bench/bridge_scale.py
widens its recorded capture (bench/data/airflow-3.3.2-datadog.statsd) over every DAG and task, turned
into the calls Airflow's OpenTelemetry logger makes (airflow/_shared/observability/metrics/
otel_logger.py: a counter, gauge or exponential histogram per name, tags as attributes, legacy names
as instruments of their own) on the real OpenTelemetry SDK of the Airflow venv (scripts/airflow-venv.sh),
and exported as its OTLP exporter batches them:

  - the scheduler (and DAG processor): one MeterProvider, cumulative temporality, the SDK's default
    cardinality limit (2,000 attribute sets per instrument), every stream in every export;
  - each task run: a process of its own that exports its few points once, at exit (the task runner
    sends ti.start, ti.finish, task.duration, operator_successes, ti_successes and their legacy twins).

Phases, each on a fresh bridge (`airflow-monitor serve`, OTLP on a free port):
  1. load: the scheduler's first export and one export per task (every series created);
  2. steady: for --seconds, the scheduler's next export every --interval seconds (the recorded mix
     recorded between exports) and --task-runs task-run exports a second; CPU per second of wall time;
  3. saturation: scheduler exports back to back for --saturate seconds: points/s and CPU-s per point;
  4. statsd on the same shape: the same load and mix as DogStatsD lines (bench/bridge_scale.py's),
     at --statsd-rate lines/s: CPU-s per line.
Figures, not assertions: the machine is shared and noisy; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bridge_scale as bs  # noqa: E402

TASK_METRICS = ("ti.start", "ti.finish", "task.duration", "operator_successes", "operator_failures",
                "ti_successes", "ti_failures")
_TASK = re.compile(r"(?:task_id:|\.)(t\d\d)(?=[.,|:]|$)")
_DAG = re.compile(r"dag_(\d{4})")


# ---------------------------------------------------------------- generation (the Airflow venv)
def parse(line: str) -> tuple[str, str, float, dict]:
    head, rest = line.split(":", 1)
    parts = rest.split("|")
    value, kind = float(parts[0]), parts[1]
    tags = {}
    for p in parts[2:]:
        if p.startswith("#"):
            for t in p[1:].split(","):
                k, _, v = t.partition(":")
                tags[k] = v
    return head, kind, value, tags


def is_task_line(name: str) -> bool:
    short = name[len("airflow."):]
    return short.startswith(TASK_METRICS) or short.startswith(("operator_successes_", "operator_failures_")) \
        or (short.startswith("dag.") and short.endswith(".duration"))


class Recorder:
    """Airflow's SafeOtelLogger in miniature: one instrument per name, as its MetricsMap keeps them."""

    def __init__(self, meter):
        self.meter = meter
        self.instruments: dict[tuple[str, str], object] = {}
        self.gauges: dict[tuple, float] = {}

    def record(self, line: str) -> None:
        name, kind, value, tags = parse(line)
        inst = self.instruments.get((name, kind))
        if inst is None:
            if kind == "c":
                inst = self.meter.create_counter(name)
            elif kind == "g":
                inst = self.meter.create_gauge(name)
            else:
                inst = self.meter.create_histogram(name, unit="ms")
            self.instruments[(name, kind)] = inst
        if kind == "c":
            inst.add(value, attributes=tags)
        elif kind == "g":
            inst.set(value, attributes=tags)
        else:
            inst.record(value, attributes=tags)


def generate(out: Path, dags: int, tasks: int, snapshots: int) -> None:
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    def provider(instance: str):
        reader = InMemoryMetricReader()
        mp = MeterProvider(resource=Resource.create({"service.name": "Airflow", "service.instance.id": instance}),
                           metric_readers=[reader], views=[View(instrument_type=metrics.Histogram,
                                                                aggregation=ExponentialBucketHistogramAggregation())])
        return mp, reader, Recorder(mp.get_meter("airflow._shared.observability.metrics.otel_logger"))

    out.mkdir(parents=True, exist_ok=True)
    load = bs.load_lines(dags, tasks)
    mix = bs.mix_lines(dags, tasks)
    sched_mp, sched_reader, sched = provider("airflow-scheduler-0")
    by_task: dict[str, list[str]] = {}
    for line in load:
        name = line.split(":", 1)[0]
        task, dag = _TASK.search(line), _DAG.search(line)
        if is_task_line(name) and task and dag:
            by_task.setdefault(f"{dag.group(1)}/{task.group(1)}", []).append(line)
        else:
            sched.record(line)
    (out / "sched-0.pb").write_bytes(encode_metrics(sched_reader.get_metrics_data()).SerializeToString())
    # the recorded mix between two exports: a tenth of it each time
    step = max(1, len(mix) // 10)
    for i in range(1, snapshots):
        for line in mix[(i - 1) * step : i * step]:
            if not is_task_line(line.split(":", 1)[0]):
                sched.record(line)
        (out / f"sched-{i}.pb").write_bytes(encode_metrics(sched_reader.get_metrics_data()).SerializeToString())
    # task runs: a template made by the SDK for one run, stamped for each (a MeterProvider per run
    # would take minutes to build for 20,000 runs; the messages are the same)
    runs = list(by_task.values())
    mp, reader, rec = provider("airflow-scheduler-0")  # task processes inherit OTEL_RESOURCE_ATTRIBUTES
    for line in runs[0]:
        rec.record(line)
    template = encode_metrics(reader.get_metrics_data())
    first = runs[0]
    with open(out / "tasks.pb", "wb") as f:
        for n, lines in enumerate(runs):
            msg = _stamp(template, first, lines, n)
            data = msg.SerializeToString()
            f.write(len(data).to_bytes(4, "big") + data)
    print(f"generated: {dags}x{tasks}, {len(runs)} task runs, {snapshots} scheduler exports")


def _stamp(template, first_lines: list[str], lines: list[str], n: int):
    """The template task run's export with this run's ids and start time."""
    msg = type(template)()
    msg.CopyFrom(template)
    subst = {}
    for a, b in zip(first_lines, lines, strict=False):
        na, nb = a.split(":", 1)[0], b.split(":", 1)[0]
        subst[na] = nb
        ta, tb = parse(a)[3], parse(b)[3]
        for k, v in ta.items():
            if k in tb:
                subst[v] = tb[k]
    for sm in msg.resource_metrics[0].scope_metrics:
        for m in sm.metrics:
            m.name = subst.get(m.name, m.name)
            data = getattr(m, m.WhichOneof("data"))
            for dp in data.data_points:
                dp.start_time_unix_nano += n
                for kv in dp.attributes:
                    if kv.value.string_value in subst:
                        kv.value.string_value = subst[kv.value.string_value]
    return msg


# ---------------------------------------------------------------- the load (this repository's Python)
class Bridge:
    def __init__(self, tmp: Path):
        self.udp, self.http, self.otlp = bs.free_port(socket.SOCK_DGRAM), bs.free_port(), bs.free_port()
        cmd = [sys.executable, "-m", "monitor.cli", "serve", "--statsd-udp", f"127.0.0.1:{self.udp}",
               "--statsd-tcp", "", "--web-listen", f"127.0.0.1:{self.http}", "--otlp-listen",
               f"127.0.0.1:{self.otlp}", "--log-level", "WARNING", "--udp-rcvbuf", "212992"]
        self.log = open(tmp / f"bridge-{self.http}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.tool = bs.Tool.__new__(bs.Tool)
        self.tool.name, self.tool.http, self.tool.udp = "airflow-monitor", self.http, self.udp
        self.tool.lines_metric, self.tool.proc = "airflow_monitor_bridge_lines_total", self.proc
        for _ in range(300):
            try:
                self.tool.scrape(gz=True, timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        self.pids = bs.tree(self.proc.pid)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.otlp, timeout=60)

    def post(self, body: bytes) -> float:
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/metrics", body, {"Content-Type": "application/x-protobuf"})
        r = self.conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"OTLP answered {r.status}")
        return time.perf_counter() - t0

    def value(self, name: str) -> float:
        return self.tool.value(self.tool.scrape(gz=True)[2], name)

    def cpu(self) -> float:
        return bs.cpu(self.pids)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def task_bodies(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def rerun(body: bytes, n: int) -> bytes:
    """A task run's export again, as a later run of the same task sends it (a later start time)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    msg = ExportMetricsServiceRequest.FromString(body)
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for dp in getattr(m, m.WhichOneof("data")).data_points:
                    dp.start_time_unix_nano += n * 3_600_000_000_000
                    dp.time_unix_nano += n * 3_600_000_000_000
    return msg.SerializeToString()


def load_avg() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_otlp(gen: Path, tmp: Path, args) -> None:
    sched = [gen / f"sched-{i}.pb" for i in range(args.snapshots)]
    bodies = [p.read_bytes() for p in sched]
    tasks = task_bodies(gen / "tasks.pb")
    n_load_tasks = len(tasks)
    mib = 2**20
    print(f"\n== OTLP at {args.size}: scheduler export {len(bodies[0]) / mib:.1f} MiB, "
          f"{len(tasks):,} task-run exports ({sum(map(len, tasks)) / len(tasks):.0f} bytes each)  [{load_avg()}]")
    b = Bridge(tmp)
    try:
        c0, t0 = b.cpu(), time.perf_counter()
        took = b.post(bodies[0])
        for body in tasks[:n_load_tasks]:
            b.post(body)
        load_s, load_cpu = time.perf_counter() - t0, b.cpu() - c0
        points = b.value("airflow_monitor_bridge_otlp_points_total")
        series = b.value("airflow_monitor_bridge_series")
        print(f"  load: {points:,.0f} points into {series:,.0f} series in {load_s:.1f} s, {load_cpu:.1f} CPU-s "
              f"(first scheduler export answered in {took:.2f} s)")
        # steady: an export every interval, task runs at their rate
        p0, c0 = points, b.cpu()
        latencies, i, t_end = [], 1, time.monotonic() + args.seconds
        next_export = time.monotonic()
        k = n_load_tasks
        while time.monotonic() < t_end:
            now = time.monotonic()
            if now >= next_export:
                latencies.append(b.post(bodies[i % len(bodies)]))
                i += 1
                next_export += args.interval
            for _ in range(args.task_runs):  # a task runs again: a new process, a new start time
                b.post(rerun(tasks[k % len(tasks)], k // len(tasks) + 1))
                k += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        steady_cpu = b.cpu() - c0
        points = b.value("airflow_monitor_bridge_otlp_points_total")
        print(f"  steady {args.seconds:.0f} s (an export every {args.interval:.0f} s, {args.task_runs} task runs/s): "
              f"{(points - p0) / args.seconds:,.0f} points/s, {steady_cpu / args.seconds:.2f} cores; each scheduler "
              f"export answered in {min(latencies):.2f} to {max(latencies):.2f} s  [{load_avg()}]")
        # saturation
        p0, c0, t0 = points, b.cpu(), time.perf_counter()
        while time.perf_counter() - t0 < args.saturate:
            b.post(bodies[i % len(bodies)])
            i += 1
        wall, cpu = time.perf_counter() - t0, b.cpu() - c0
        points = b.value("airflow_monitor_bridge_otlp_points_total")
        n = points - p0
        print(f"  saturated {wall:.0f} s: {n / wall:,.0f} points/s, {n / cpu:,.0f} points per CPU-s "
              f"({cpu / n * 1e6:.1f} CPU-µs a point, both processes)  [{load_avg()}]")
        print(f"  RSS: peak {bs.mem(b.pids, 'VmHWM') / mib:.0f} MiB (both processes; PSS now "
              f"{bs.pss(b.pids) / mib:.0f} MiB); " + ", ".join(
                  f"{name} {bs.mem([p], 'VmHWM') / mib:.0f} MiB" for name, p in zip(("ingest", "web"), b.pids,
                                                                                     strict=False)))
        print(f"  scrape while loaded: {b.tool.scrape(gz=True)[0]:.2f} s gzip text")
    finally:
        b.stop()


def run_statsd(tmp: Path, args) -> None:
    dags, tasks = (int(x) for x in args.size.split("x"))
    sender = bs.build_sender(tmp)
    b = Bridge(tmp)
    mib = 2**20
    try:
        lines = bs.load_lines(dags, tasks)
        load = tmp / "load.txt"
        load.write_text("\n".join(lines) + "\n")
        c0 = b.cpu()
        bs.send(sender, b.udp, 20_000, len(lines) / 20_000, load)
        time.sleep(2)
        load_cpu = b.cpu() - c0
        mix = tmp / "mix.txt"
        mix.write_text("\n".join(bs.mix_lines(dags, tasks)) + "\n")
        before, c0 = b.tool.lines(), b.cpu()
        sent, achieved = bs.send(sender, b.udp, args.statsd_rate, 20, mix)
        c1 = b.cpu()
        time.sleep(1)
        counted = b.tool.lines() - before
        print(f"\n== statsd on the same shape ({args.size}): load {len(lines):,} lines, {load_cpu:.1f} CPU-s; "
              f"mix at {achieved:,.0f} lines/s: {counted / (c1 - c0):,.0f} lines per CPU-s "
              f"({(c1 - c0) / counted * 1e6:.1f} CPU-µs a line), loss {max(0, 1 - counted / sent) * 100:.3f} %  "
              f"[{load_avg()}]")
        print(f"  RSS: peak {bs.mem(b.pids, 'VmHWM') / mib:.0f} MiB (both processes; PSS now "
              f"{bs.pss(b.pids) / mib:.0f} MiB)")
    finally:
        b.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2000x10")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--task-runs", type=int, default=50, help="task-run exports a second in the steady phase")
    ap.add_argument("--saturate", type=float, default=30)
    ap.add_argument("--snapshots", type=int, default=7)
    ap.add_argument("--statsd-rate", type=int, default=50_000)
    ap.add_argument("--generate", help=argparse.SUPPRESS)  # internal: run by the Airflow venv's Python
    args = ap.parse_args()
    dags, tasks = (int(x) for x in args.size.split("x"))
    if args.generate:
        generate(Path(args.generate), dags, tasks, args.snapshots)
        return
    os.chdir(ROOT)
    venv = Path(subprocess.run([str(ROOT / "scripts" / "airflow-venv.sh")], check=True, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        gen = tmp / "gen"
        subprocess.run([str(venv / "bin" / "python"), __file__, "--generate", str(gen), "--size", args.size,
                        "--snapshots", str(args.snapshots)], check=True)
        run_otlp(gen, tmp, args)
        if shutil.which("cc"):
            run_statsd(tmp, args)


if __name__ == "__main__":
    main()
