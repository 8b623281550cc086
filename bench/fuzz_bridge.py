"""Coverage-guided fuzzing of the bridge's parser, mapper, store and exposition (atheris/libFuzzer).

    pip install atheris      # a wheel for CPython 3.11 on x86_64 Linux; no compiler needed
    python bench/fuzz_bridge.py [--seconds 300] [--check-every 25] [--go-every 2000]

Each input is either a mapping file (first byte 0: the rest is YAML that must load or be refused
with a MappingError, and when it loads it maps what follows) or statsd bytes, handled as a UDP
datagram or a TCP chunk by the bridge's real Ingest into a real Store, while a StoreView (the web
process's side) applies the journal and renders. Time moves 0.3 s an input, and series expire
after 20 s, so housekeeping, slot reuse and twin hold-backs run too. Seeds: the recorded Airflow
3.3.2 traffic in all three statsd modes, lines known to have broken statsd tools, and mapping
files (the official Airflow chart's when ../shared is beside the repository).

A finding is any of: an exception out of Ingest (the service counts unexpected errors as
internal_errors instead of dying; here they are raised so that libFuzzer reports them), a mapping
file that fails with anything but MappingError, or an exposition that Prometheus would refuse:
every --check-every inputs with the checks of tests/expfmt.py, every --go-every inputs also with
Prometheus' own Go parser. The store starts afresh every 5,000 inputs. It prints inputs tried,
findings and expositions checked; figures, not assertions.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["monitor"]):
    from monitor.bridge.exposition import StoreView
    from monitor.bridge.ingest import Ingest
    from monitor.bridge.mapper import Mapper, MappingError, load_rules
    from monitor.bridge.store import Store
from testkit import expfmt  # noqa: E402 - after instrumentation

SEED_LINES = [
    b"airflow.ti.finish.dag.task.success:1|c", b"airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:success",
    b"airflow.task.duration:12.5|ms|#dag_id:d,task_id:t", b"airflow.pool.open_slots.default_pool:128|g",
    b"airflow.pool.starving_tasks.default_pool:0|s", b"airflow.dagrun.duration.success.d:5|ms",
    b"app.t:5|ms", b"app.t_sum:1|g", b"app.x:1|c", b"app.x_total:2|g", b"app.rows_total:2|c",
    b"app.y:1|c|#__name__:evil", b"app.z:1|ms|#le:0.5", b"app.flag:1|c|#method:GET,flag",
    b"airflow_sla_breached:0|g|#dag_id:x,rule:max_age", b"airflow_monitor_bridge_parse_errors:0|c",
    b"gauge:+1|g\ngauge:-3|g\ngauge:NaN|g", b"c:1|c|@0.1", b"h:1:2:3|h|@0.5|#a:b", b"s:x|s\ns:y|s",
    b"web--server.hits:1|c", b"influx,tag=a,other=b:1|c", b"d:1e308|d", b"neg:-1|c",
]
SEED_MAPPINGS = [
    b'mappings:\n- match: "(.*)\\\\.empty"\n  match_type: regex\n  name: "${1}"\n',
    b'mappings:\n- match: "."\n  match_type: regex\n  action: drop\n  name: dropped\n',
    b'defaults:\n  glob_disable_ordering: true\nmappings:\n- match: "a.*.*"\n  name: "a_${1}"\n'
    b'  labels: {k: "${2}", le: "${1}"}\n- match: "a.b.*"\n  name: "${1}_total"\n  scale: 0.001\n',
    b'mappings:\n- match: "app.*"\n  name: "x"\n  match_metric_type: counter\n  honor_labels: true\n'
    b'  histogram_options: {buckets: [0.5, 1]}\n',
]


class Fuzz:
    def __init__(self, check_every: int, go_every: int, corpus: Path):
        self.check_every, self.go_every, self.corpus = check_every, go_every, corpus
        self.inputs = self.findings = self.checked = self.go_checked = self.mappings_loaded = 0
        self.mappings_refused = self.invalid = 0
        self.mapper = Mapper()
        self.fresh()

    def fresh(self) -> None:
        self.store = Store(default_ttl=20.0, max_series_per_family=500, max_series=20_000)
        self.ingest = Ingest(self.mapper, self.store, cache_bytes=4 << 20)
        self.ingest._internal = self._raise  # a finding, not a counted line
        self.view = StoreView(self.store.vals)
        self.now = 1000.0

    @staticmethod
    def _raise(err: Exception) -> None:
        raise err

    def one(self, data: bytes) -> None:
        self.inputs += 1
        if self.inputs % 5000 == 0:
            self.fresh()
        self.now += 0.3
        if data[:1] == b"\x00":
            self.mapping(data[1:])
        else:
            transport = "tcp" if data[:1] == b"\x01" else "udp"
            self.ingest.handle(data, transport, self.now)
        if self.inputs % 10 == 0:
            self.ingest.housekeeping(self.now)
        if self.inputs % self.check_every == 0:
            self.check()

    def mapping(self, text: bytes) -> None:
        with tempfile.NamedTemporaryFile("wb", suffix=".yml") as f:
            f.write(text)
            f.flush()
            try:
                rules = load_rules(f.name)
            except MappingError:
                self.mappings_refused += 1
                return
        self.mappings_loaded += 1
        self.mapper = Mapper(rules)
        self.ingest.reload(self.mapper)

    def check(self) -> None:
        self.view.apply(self.store.take_journal())
        text = self.view.text()
        try:
            expfmt.check_text(text)
            self.checked += 1
            if self.inputs % self.go_every == 0:
                expfmt.parse(text)
                self.go_checked += 1
        except Exception:  # the checks refuse it (AssertionError) or cannot even read it
            self.invalid += 1
            (self.corpus / f"invalid-exposition-{self.inputs}.txt").write_text(text)
            raise


def seeds(directory: Path) -> None:
    data = [*SEED_LINES, *(b"\x00" + m for m in SEED_MAPPINGS)]
    chart = ROOT.parent / "shared" / "fixtures" / "airflow-chart-statsd-mappings.yml"
    if chart.exists():
        data.append(b"\x00" + chart.read_bytes())
    for capture in sorted((ROOT / "bench" / "data").glob("*.statsd")):
        lines = capture.read_bytes().splitlines()
        data += [b"\n".join(lines[i : i + 4]) for i in range(0, len(lines), 37)]
    for i, d in enumerate(data):
        (directory / f"seed-{i:04d}").write_bytes(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--check-every", type=int, default=25)
    ap.add_argument("--go-every", type=int, default=2000)
    args, rest = ap.parse_known_args()
    logging.basicConfig(level=logging.ERROR)  # the mapper's warnings about fuzzed keys are expected
    if expfmt._build() is None:
        sys.exit("fuzz_bridge: Prometheus' Go parser cannot be built (scripts/system-deps.sh installs Go)")
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-bridge-"))
    fz = Fuzz(args.check_every, args.go_every, corpus)
    seeds(corpus)
    start = time.monotonic()
    deadline = start + args.seconds

    def report() -> None:
        took = time.monotonic() - start
        print(f"\nfuzz_bridge: {fz.inputs:,} inputs in {took:.0f} s ({fz.inputs / max(took, 1e-9):,.0f}/s); "
              f"findings {fz.findings}; expositions checked {fz.checked:,} "
              f"(Prometheus' Go parser {fz.go_checked:,}), invalid {fz.invalid}; mapping files loaded "
              f"{fz.mappings_loaded:,}, refused with a one-line error {fz.mappings_refused:,}", flush=True)

    def target(data: bytes) -> None:
        if time.monotonic() > deadline:
            report()
            os._exit(0)
        try:
            fz.one(data)
        except BaseException:
            fz.findings += 1
            print(f"\nfuzz_bridge: FINDING after {fz.inputs:,} inputs on {data[:200]!r}", flush=True)
            report()
            raise

    print(f"fuzz_bridge: corpus and any finding's input in {corpus}", flush=True)
    atheris.Setup([sys.argv[0], "-max_len=4096", "-timeout=20", "-rss_limit_mb=4096",
                   f"-artifact_prefix={corpus}/", *rest, str(corpus)],
                  target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
