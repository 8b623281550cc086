"""The bridge at the scale of a large Airflow: load thousands of DAGs, then ingest while scraped.

    python bench/bridge_scale.py [--sizes 500x10,2000x10] [--rate 100000] [--seconds 60]
                                 [--scrape-every 15] [--parallel 1] [--rcvbuf 212992]
                                 [--statsd-exporter PATH]

For each size (DAGs x tasks) and each tool (airflow-monitor, and statsd_exporter when its binary
is given), on one machine in one run:
  1. load: every series an Airflow of that size emits, DogStatsD tags, as a real Airflow 3.3.2
     sends them (bench/data/airflow-3.3.2-datadog.statsd, widened: per task run ti.start,
     ti.finish, task.duration, task.scheduled_duration, operator_successes, ti_successes and
     their legacy twins; per DAG run dagrun.duration, dependency-check, schedule_delay; the
     scheduler's gauges);
  2. idle scrapes, with and without gzip;
  3. the recorded real mix, widened to every DAG, at --rate lines/s, one line per datagram, from
     a C sender (bench/sender.c, sendmmsg, steady rate) for --seconds while /metrics is scraped
     every --scrape-every seconds with gzip, as Prometheus does;
  4. the same mix at --fast-rate without scrapes, for the CPU cost per line.
It prints per-scrape time and bytes, loss, CPU-s per million lines counted (lost lines cost nothing,
so this is per line processed), peak RSS and bytes per series (both processes of the bridge).
The receive buffer is what a non-root pod gets (--rcvbuf, the kernel default net.core.rmem_max:
212992); the tool may not raise it. Figures, not assertions: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK = os.sysconf("SC_CLK_TCK")
CAPTURE = HERE / "data" / "airflow-3.3.2-datadog.statsd"
PROTO_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
                "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


# ---------------------------------------------------------------- the stream
def widen(line: str, dag: int, task: int | None) -> str:
    line = line.replace("team.sales_daily", f"team.dag_{dag:04d}").replace("team__sales_daily", f"team__dag_{dag:04d}")
    if task is not None:
        for real, legacy in (("extract.load", "extract__load"), ("boom", "boom")):
            line = line.replace(f"task_id:{real}", f"task_id:t{task:02d}").replace(f".{legacy}.", f".t{task:02d}.")
            if line.endswith(f".{legacy}:1|c"):
                line = line.replace(f".{legacy}:1|c", f".t{task:02d}:1|c")
    return line


def load_lines(dags: int, tasks: int) -> list[str]:
    """One line per series an Airflow of this size creates (and each one's legacy twin)."""
    cap = [x for x in CAPTURE.read_text().splitlines() if x]
    per_task = [x for x in cap if re.search(r"task_id:(extract\.load)\b|\.extract__load[.:]", x)]
    per_task = list(dict.fromkeys(x.split(":", 1)[0] + ":" + x.split(":", 1)[1] for x in per_task))
    per_dag = list(dict.fromkeys(x for x in cap if "sales_daily" in x and "task_id" not in x
                                 and "extract__load" not in x and ".boom" not in x))
    per_dag += [f"airflow.dagrun.schedule_delay:{250 + 1}|ms|#dag_id:team.sales_daily,run_type:scheduled",
                "airflow.dagrun.schedule_delay.team__sales_daily:251|ms|#run_type:scheduled",
                "airflow.dagrun.duration.success:61234|ms|#dag_id:team.sales_daily,run_type:scheduled",
                "airflow.dagrun.duration.success.team__sales_daily:61234|ms|#run_type:scheduled"]
    failed = [x for x in cap if "boom" in x and ("ti.finish" in x or "operator_failures" in x)]
    out = []
    for d in range(dags):
        out += [widen(x, d, None) for x in per_dag]
        for t in range(tasks):
            out += [widen(x, d, t) for x in per_task]
            if t == tasks - 1:  # one task per DAG fails
                out += [widen(x.replace("boom", "extract.load" if "task_id:" in x else "extract__load"), d, t)
                        for x in failed]
    out += [x for x in cap if "sales_daily" not in x]  # the scheduler's own series
    return out


def mix_lines(dags: int, tasks: int) -> list[str]:
    """The recorded real mix, its DAG and task ids spread over every DAG and task."""
    cap = [x for x in CAPTURE.read_text().splitlines() if x]
    out = []
    for i in range(max(1, 20_000 // len(cap))):
        for k, x in enumerate(cap):
            n = i * len(cap) + k
            out.append(widen(x, n % dags, (n // dags) % tasks))
    return out


# ---------------------------------------------------------------- processes
def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and its children (the bridge's web process)."""
    out = [pid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError):
                pass
    return out


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / CLK
        except OSError:
            pass
    return total


def mem(pids: list[int], key: str, file: str = "status") -> int:
    """A `key: N kB` line of /proc/<pid>/<file>, in bytes, summed over the processes."""
    total = 0
    for pid in pids:
        try:
            m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/{file}").read_text(), re.M)
            total += int(m.group(1)) * 1024 if m else 0
        except OSError:
            pass
    return total


class Tool:
    def __init__(self, name: str, cmd: list[str], http: int, udp: int, lines_metric: str):
        self.name, self.http, self.udp, self.lines_metric = name, http, udp, lines_metric
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        self.pids = tree(self.proc.pid)

    def scrape(self, gz: bool = True, timeout: float = 60, proto: bool = False) -> tuple[float, int, str]:
        """(seconds, bytes received, text); proto: ask for the protobuf format as Prometheus with native
        histograms does (the text returned is then empty: the figures are what matter)."""
        headers = {"Accept-Encoding": "gzip"} if gz else {}
        if proto:
            headers["Accept"] = PROTO_ACCEPT
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/metrics", headers=headers)
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            enc = r.headers.get("Content-Encoding", "")
            ctype = r.headers.get("Content-Type", "")
        took = time.perf_counter() - t0
        if ctype.startswith("application/vnd.google.protobuf"):
            return took, len(body), ""
        text = gzip.decompress(body).decode() if enc == "gzip" else body.decode()
        return took, len(body), text

    def value(self, text: str, name: str) -> float:
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                   if x.startswith(name + " ") or x.startswith(name + "{"))

    def lines(self) -> float:
        return self.value(self.scrape(gz=True)[2], self.lines_metric)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bridge(rcvbuf: int, extra: list[str] | None = None) -> Tool:
    """The bridge on its default settings (caps, cache), with a pod's receive buffer."""
    udp, http = free_port(socket.SOCK_DGRAM), free_port()
    cmd = [sys.executable, "-m", "monitor.cli", "serve", "--statsd-udp", f"127.0.0.1:{udp}", "--statsd-tcp", "",
           "--web-listen", f"127.0.0.1:{http}", "--otlp-listen", "", "--log-level", "WARNING",
           "--udp-rcvbuf", str(rcvbuf), *(extra or [])]
    return Tool("airflow-monitor", cmd, http, udp, "airflow_monitor_bridge_lines_total")


def statsd_exporter(path: str, rcvbuf: int) -> Tool:
    udp, http = free_port(socket.SOCK_DGRAM), free_port()
    cmd = [path, f"--statsd.listen-udp=127.0.0.1:{udp}", "--statsd.listen-tcp=", "--statsd.listen-unixgram=",
           f"--web.listen-address=127.0.0.1:{http}", f"--statsd.read-buffer={rcvbuf}", "--log.level=warn"]
    return Tool("statsd_exporter", cmd, http, udp, "statsd_exporter_lines_total")


def build_sender(tmp: Path) -> Path:
    exe = tmp / "sender"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "sender.c")], check=True)
    return exe


def send(sender: Path, port: int, rate: int, seconds: float, file: Path) -> tuple[int, float]:
    out = subprocess.run([str(sender), "127.0.0.1", str(port), str(rate), str(seconds), str(file)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[1]), float(out[3])


_SUB = re.compile(r'(,?(le|quantile)="[^"]*")')


def series_count(text: str) -> int:
    """Series, not lines: a histogram's buckets, _sum and _count (a summary's quantiles) are one."""
    out = set()
    for line in text.splitlines():
        if line and line[0] != "#":
            head = _SUB.sub("", line.rsplit(" ", 1)[0]).replace("{,", "{").replace("{}", "")
            name, brace, labels = head.partition("{")
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            out.add(name + brace + labels)
    return len(out)


# ---------------------------------------------------------------- one tool, one size
def run(tool: Tool, sender: Path, tmp: Path, dags: int, tasks: int, args) -> dict:
    r: dict = {"tool": tool.name, "size": f"{dags}x{tasks}", "parallel": args.parallel}
    rss0 = mem(tool.pids, "VmRSS")
    load = tmp / f"load-{dags}x{tasks}.txt"
    lines = load_lines(dags, tasks)
    load.write_text("\n".join(lines) + "\n")
    before = tool.lines()
    send(sender, tool.udp, 20_000, len(lines) / 20_000, load)  # gently: nothing of the load is lost
    time.sleep(2)
    _, _, text = tool.scrape()
    r["load_lost"] = len(lines) - (tool.value(text, tool.lines_metric) - before)
    r["lines_idle"] = sum(1 for x in text.splitlines() if x and not x.startswith("#"))
    r["series"] = series_count(text)
    tool.pids = tree(tool.proc.pid)
    idle = [tool.scrape(gz=False) for _ in range(2)]
    idle_gz = [tool.scrape(gz=True) for _ in range(2)]
    r["idle"] = (min(x[0] for x in idle), idle[0][1])
    r["idle_gz"] = (min(x[0] for x in idle_gz), idle_gz[0][1])
    r["proto"] = tool.name == "airflow-monitor" and "proto" in args.formats
    if r["proto"]:
        first = tool.scrape(gz=False, proto=True)  # every arena rendered
        idle_pb = [tool.scrape(gz=False, proto=True) for _ in range(2)]
        idle_pb_gz = [tool.scrape(gz=True, proto=True) for _ in range(2)]
        r["first_pb"] = first[:2]
        r["idle_pb"] = (min(x[0] for x in idle_pb), idle_pb[0][1])
        r["idle_pb_gz"] = (min(x[0] for x in idle_pb_gz), idle_pb_gz[0][1])
    r["rss_loaded"] = mem(tool.pids, "VmRSS")
    r["rss0"] = rss0

    mix = tmp / f"mix-{dags}x{tasks}.txt"
    mix.write_text("\n".join(mix_lines(dags, tasks)) + "\n")
    scrapes: list[tuple[float, int]] = []
    pb_scrapes: list[tuple[float, int]] = []
    stop = threading.Event()

    def one_scrape(proto: bool = False):
        try:
            took, size, _ = tool.scrape(gz=True, proto=proto)
            (pb_scrapes if proto else scrapes).append((took, size))
        except OSError as e:
            (pb_scrapes if proto else scrapes).append((float("nan"), 0))
            print(f"    scrape failed: {e}", file=sys.stderr)

    def scraper():
        # every --scrape-every: --parallel scrapers at once (Prometheus replicas, a storm) in the text
        # format with gzip; half-way between, a Prometheus with native histograms on protobuf
        while not stop.wait(args.scrape_every / 2 if r["proto"] else args.scrape_every):
            at_once = [threading.Thread(target=one_scrape) for _ in range(args.parallel)]
            for t in at_once:
                t.start()
            for t in at_once:
                t.join()
            if r["proto"] and not stop.wait(args.scrape_every / 2):
                one_scrape(True)

    before = tool.lines()
    c0 = cpu(tool.pids)
    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    sent, achieved = send(sender, tool.udp, args.rate, args.seconds, mix)
    stop.set()
    th.join()
    time.sleep(1)
    counted = tool.lines() - before
    r["loaded_run"] = dict(sent=sent, achieved=achieved, counted=counted, loss=max(0.0, 1 - counted / sent) * 100,
                           cpu_per_m=(cpu(tool.pids) - c0) / counted * 1e6, scrapes=scrapes, pb_scrapes=pb_scrapes)

    before = tool.lines()
    c0, m0 = cpu(tool.pids), cpu(tool.pids[:1])
    sent, achieved = send(sender, tool.udp, args.fast_rate, args.fast_seconds, mix)
    c1, m1 = cpu(tool.pids), cpu(tool.pids[:1])  # before the scrape that reads the count
    time.sleep(1)
    counted = tool.lines() - before
    r["fast_run"] = dict(sent=sent, achieved=achieved, counted=counted, loss=max(0.0, 1 - counted / sent) * 100,
                         cpu_per_m=(c1 - c0) / counted * 1e6, ingest_cpu_per_m=(m1 - m0) / counted * 1e6)
    r["pids"] = tool.pids
    r["rss_peak"] = mem(tool.pids, "VmHWM")
    r["rss_end"] = mem(tool.pids, "VmRSS")
    r["pss_end"] = pss(tool.pids)
    r["rss_each"] = [(mem([p], "VmHWM"), pss([p])) for p in tool.pids]
    r["load_avg"] = os.getloadavg()
    return r


def pss(pids: list[int]) -> int:
    """Proportional set size: shared pages (the store's array) counted once over both processes, as a
    pod's memory cgroup counts them."""
    return mem(pids, "Pss", "smaps_rollup")


def report(r: dict) -> None:
    mib = 2**20
    print(f"\n== {r['tool']} at {r['size']} DAGs x tasks")
    print(f"  loaded: {r['series']:,} series, {r['lines_idle']:,} exposition lines "
          f"(load lines lost: {r['load_lost']:,.0f})")
    print(f"  idle /metrics: {r['idle'][0]:.2f} s, {r['idle'][1] / mib:.1f} MiB plain; "
          f"{r['idle_gz'][0]:.2f} s, {r['idle_gz'][1] / mib:.1f} MiB gzip")
    if r.get("proto"):
        print(f"  idle /metrics protobuf: first {r['first_pb'][0]:.2f} s ({r['first_pb'][1] / mib:.1f} MiB), then "
              f"{r['idle_pb'][0]:.2f} s, {r['idle_pb'][1] / mib:.1f} MiB plain; {r['idle_pb_gz'][0]:.2f} s, "
              f"{r['idle_pb_gz'][1] / mib:.1f} MiB gzip")
    lr = r["loaded_run"]
    print(f"  mix at {lr['achieved']:,.0f} lines/s while scraped: sent {lr['sent']:,}, counted {lr['counted']:,.0f}, "
          f"loss {lr['loss']:.3f} %, {lr['cpu_per_m']:.2f} CPU-s per million lines")
    if r["parallel"] > 1:
        took = sorted(t for t, _ in lr["scrapes"] if t == t) or [float("nan")]
        failed = sum(1 for t, _ in lr["scrapes"] if t != t)
        print(f"    {len(took)} scrapes, {r['parallel']} at a time: {took[0]:.2f}-{took[-1]:.2f} s, "
              f"median {took[len(took) // 2]:.2f} s, failed {failed}")
    else:
        for i, (took, size) in enumerate(lr["scrapes"], 1):
            print(f"    scrape {i}: {took:.2f} s, {size / mib:.1f} MiB gzip")
        for i, (took, size) in enumerate(lr.get("pb_scrapes", []), 1):
            print(f"    protobuf scrape {i}: {took:.2f} s, {size / mib:.1f} MiB gzip")
    fr = r["fast_run"]
    split = f" ({fr['ingest_cpu_per_m']:.2f} in the ingest process)" if len(r["pids"]) > 1 else ""
    print(f"  mix at {fr['achieved']:,.0f} lines/s, no scrapes: loss {fr['loss']:.3f} %, "
          f"{fr['cpu_per_m']:.2f} CPU-s per million lines{split}")
    per = (r["rss_loaded"] - r["rss0"]) / max(1, r["series"])
    print(f"  RSS: peak {r['rss_peak'] / mib:.0f} MiB, loaded {r['rss_loaded'] / mib:.0f} MiB "
          f"(~{per:.0f} bytes per series over the empty process); PSS at the end {r['pss_end'] / mib:.0f} MiB")
    if len(r.get("rss_each", [])) > 1:
        each = zip(("ingest", "web"), r["rss_each"], strict=False)
        print("  per process (peak RSS / PSS at the end): " + ", ".join(
            f"{name} {hwm / mib:.0f} / {p / mib:.0f} MiB" for name, (hwm, p) in each))
    print(f"  load average at the end: {', '.join(f'{x:.2f}' for x in r['load_avg'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500x10,2000x10")
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--scrape-every", type=float, default=15)
    ap.add_argument("--parallel", type=int, default=1, help="scrapes fired at once at each --scrape-every")
    ap.add_argument("--fast-rate", type=int, default=150_000)
    ap.add_argument("--fast-seconds", type=float, default=20)
    ap.add_argument("--rcvbuf", type=int, default=212992, help="UDP receive buffer (a pod's default rmem_max)")
    ap.add_argument("--statsd-exporter", help="path to a statsd_exporter binary to run side by side")
    ap.add_argument("--formats", default="text,proto", help="scrape formats: text (gzip) and proto (protobuf, "
                    "as Prometheus with native histograms asks), each every --scrape-every")
    ap.add_argument("--bridge-args", default="", help="extra flags for airflow-monitor serve (space separated)")
    args = ap.parse_args()
    if not shutil.which("cc"):
        sys.exit("bench/bridge_scale.py needs a C compiler (cc) for its sender")
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        sender = build_sender(tmp)
        for size in args.sizes.split(","):
            dags, tasks = (int(x) for x in size.split("x"))
            makers = [lambda: bridge(args.rcvbuf, args.bridge_args.split())]
            if args.statsd_exporter:
                makers.append(lambda: statsd_exporter(args.statsd_exporter, args.rcvbuf))
            for make in makers:
                tool = make()
                try:
                    r = run(tool, sender, tmp, dags, tasks, args)
                finally:
                    tool.stop()
                report(r)
                sys.stdout.flush()


if __name__ == "__main__":
    main()
