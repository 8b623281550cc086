"""Load benchmark for the bridge: replay real Airflow statsd over UDP loopback at fixed rates.

    python bench/bridge_load.py [--rates 50000,100000,150000] [--seconds 5] [--dags 100]

The mix is what a real Airflow 3.3.2 sent (bench/data/, recorded in plain and DogStatsD modes),
widened to --dags DAG ids, one line per datagram as Airflow sends them. The bridge runs as its
own process (`airflow-monitor serve`) pinned to CPU 0; this generator runs on CPU 1. For each
rate it prints lines sent, lines the bridge counted, loss, and the bridge's CPU. Then it reports
the highest rate with at most 0.1% loss, peak RSS, and memory per thousand active series.
Figures, not assertions: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK = os.sysconf("SC_CLK_TCK")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mix(dags: int) -> list[bytes]:
    base = []
    for f in ("plain", "datadog"):
        base += [x for x in (HERE / "data" / f"airflow-3.3.2-{f}.statsd").read_bytes().split(b"\n") if x]
    out = []
    for i in range(dags):
        for line in base:
            out.append(line.replace(b"sales_daily", b"sales_%d" % i) if b"sales_daily" in line else line)
    # interleave so that consecutive packets are not all the same key
    out.sort(key=lambda x: hash(x) & 0xFFFF)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def status(pid: int, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def scrape(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + " ") or
               x.startswith(name + "{"))


def send_at(rate: int, seconds: float, lines: list[bytes], port: int) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    addr = ("127.0.0.1", port)
    send = s.sendto
    n, i, total = 0, 0, int(rate * seconds)
    nlines = len(lines)
    start = time.perf_counter()
    chunk = max(1, rate // 1000)  # send in 1 ms slices
    while n < total:
        target = min(total, int((time.perf_counter() - start) * rate) + chunk)
        while n < target:
            try:
                send(lines[i], addr)
            except BlockingIOError:
                continue
            n += 1
            i += 1
            if i == nlines:
                i = 0
        if n < total:
            ahead = n / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
    s.close()
    return n, n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="50000,100000,150000,200000,250000,300000,350000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dags", type=int, default=100)
    ap.add_argument("--series", default="10000,50000,100000", help="series counts for the memory phase")
    args = ap.parse_args()
    lines = mix(args.dags)
    udp, http = free_port(socket.SOCK_DGRAM), free_port()
    cmd = [sys.executable, "-m", "monitor.cli", "serve", "--statsd-udp", f"127.0.0.1:{udp}", "--statsd-tcp", "",
           "--web-listen", f"127.0.0.1:{http}", "--log-level", "WARNING", "--max-series-per-family", "1000000"]
    proc = subprocess.Popen(cmd, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    if os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        print(f"mix: {len(lines)} distinct lines from a real Airflow 3.3.2, {args.dags} DAGs, one line per datagram")
        print(f"{'rate/s':>9} {'achieved':>9} {'sent':>9} {'counted':>9} {'loss %':>7} {'bridge CPU':>10}")
        best = 0
        for rate in [int(r) for r in args.rates.split(",")]:
            before = scrape(http, "airflow_monitor_bridge_lines_total")
            c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            sent, achieved = send_at(rate, args.seconds, lines, udp)
            time.sleep(0.5)
            counted = scrape(http, "airflow_monitor_bridge_lines_total") - before
            cpu = (cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0)
            loss = max(0.0, (sent - counted) / sent * 100)
            print(f"{rate:>9,} {achieved:>9,.0f} {sent:>9,} {counted:>9,.0f} {loss:>7.3f} {cpu * 100:>9.0f}%")
            if loss <= 0.1 and achieved >= 0.98 * rate:
                best = max(best, rate)
        print(f"highest sustained rate with <=0.1% loss (and the generator keeping pace): {best:,} lines/s")
        print(f"peak RSS after the rate phase: {status(proc.pid, 'VmHWM') / 2**20:.1f} MiB")

        # memory per active series: distinct task series, each a counter and a histogram
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rss0, series0 = status(proc.pid, "VmRSS"), scrape(http, "airflow_monitor_bridge_series")
        sent_series = 0
        for target in [int(x) for x in args.series.split(",")]:
            while sent_series < target:
                dag, task = divmod(sent_series, 50)
                for line in (b"airflow.ti.start:1|c|#dag_id:mem_dag_%d,task_id:task_%d" % (dag, task),):
                    s.sendto(line, ("127.0.0.1", udp))
                sent_series += 1
                if sent_series % 2000 == 0:
                    time.sleep(0.01)
            time.sleep(1.0)
            n = scrape(http, "airflow_monitor_bridge_series") - series0
            rss = status(proc.pid, "VmRSS")
            per_k = (rss - rss0) / max(1, n) * 1000
            print(f"active series +{n:,.0f}: RSS {rss / 2**20:.1f} MiB, {per_k / 1024:.2f} KiB per 1000 series "
                  f"({per_k / 1000:.0f} bytes/series)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
