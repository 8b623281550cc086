"""Coverage-guided fuzzing of the bridge's parser, mapper, store and exposition (atheris/libFuzzer).

    pip install atheris      # a wheel for CPython 3.11 on x86_64 Linux; no compiler needed
    python bench/fuzz_bridge.py [--seconds 300] [--check-every 25] [--go-every 2000]

Each input is either a mapping file (first byte 0: the rest is YAML that must load or be refused
with a MappingError, and when it loads it maps what follows; first byte 2: a mapping file built
from the input's bytes out of the parts hostile files are made of: anchors and aliases fanning out,
deep nesting, regexes with backreferences, lookaround, huge repetitions and nested quantifiers,
`$n` templates naming groups that do not exist; each is loaded, then adversarial names of up to
1,000 bytes are mapped through it) or statsd bytes, handled as a UDP datagram or a TCP chunk by the
bridge's real Ingest into a real Store, while a StoreView (the web process's side) applies the
journal and renders. Time moves 0.3 s an input, and series expire
after 20 s, so housekeeping, slot reuse and twin hold-backs run too. Seeds: the recorded Airflow
3.3.2 traffic in all three statsd modes, lines known to have broken statsd tools, and mapping
files (the official Airflow chart's when ../shared is beside the repository).

A finding is any of: an exception out of Ingest (the service counts unexpected errors as
internal_errors instead of dying; here they are raised so that libFuzzer reports them), a mapping
file that fails with anything but MappingError, a mapping load or a name's mapping that takes more
than --slow seconds (unbounded work: an alias bomb, backtracking), or an exposition that
Prometheus would refuse:
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
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["monitor"]):
    from monitor.bridge.exposition import StoreView
    from monitor.bridge.ingest import Ingest
    from monitor.bridge.mapper import Mapper, MappingError, load_rules
    from monitor.bridge.parse import Key
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
    b'defaults:\n  shared:\n  - &a [1, 2, 3]\n  - &b [*a, *a, *a]\nmappings:\n'
    b'- {match: a.b, name: x, histogram_options: {buckets: *b}, labels: &l {k: v}}\n'
    b'- {match: c, name: y, labels: *l}\n',
    b'mappings:\n- match: "(.*)\\\\.(.*)--(.*)\\\\.status\\\\.(.*)\\\\.count"\n  match_type: regex\n'
    b'  name: "req_$1_${4}_$99999999999999999999"\n',
    b"mappings: [[[[[[[[[[[[[[[[{match: a, name: b}]]]]]]]]]]]]]]]]\n",
    b'mappings:\n- {match: "(a+)+$", match_type: regex, name: x}\n- {match: "(a)\\\\1", match_type: regex, name: y}\n',
]
# the parts hostile mapping files are made of (structured inputs, first byte 2)
REGEX_PARTS = ["(.*)", "\\.", "(.+)", "[a-z]+", "(a|b)*", "(?P<n>x)", "\\1", "(?P=n)", "(?=a)", "(?!b)", "(?<=c)",
               "(?>d)", "a{1000}", "a{1001}", "a{4294967296}", "{2,}", "\\d", "\\pL", "[[:alpha:]]", "(?i)", "^", "$",
               "\\z", "\\Z", "(?:x+)+", "((a*)*)*", "--", "\\.status\\.", "\\", "(", ")", "[", "]", "{", "}", "*",
               "+", "?", "|", "\u00e9", "\\x{10FFFF}", ".*?", "a**"]
TEMPLATES = ["$1", "${2}", "$0", "${9}", "$99999999999999999999", "${1}_${2}", "x", "airflow_ti_finish_total",
             "airflow_dagrun_duration_count", "$", "${", "_created", "airflow_monitor_x"]
NAMES = ["a.--" * 249, ".--" * 333, "a." * 499, "web.api--get.status.500.count", "airflow.ti.finish",
         "x" * 1000, "é" * 300, "a" * 999 + "!"]


class Fuzz:
    def __init__(self, check_every: int, go_every: int, corpus: Path, slow: float = 2.0):
        self.check_every, self.go_every, self.corpus, self.slow = check_every, go_every, corpus, slow
        self.inputs = self.findings = self.checked = self.go_checked = self.mappings_loaded = 0
        self.mappings_refused = self.invalid = self.structured_files = self.names_mapped = 0
        self.slowest_load = self.slowest_map = 0.0
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
        elif data[:1] == b"\x02":
            self.structured_files += 1
            self.mapping(self.structured(data[1:]), names=True)
        else:
            transport = "tcp" if data[:1] == b"\x01" else "udp"
            self.ingest.handle(data, transport, self.now)
        if self.inputs % 10 == 0:
            self.ingest.housekeeping(self.now)
        if self.inputs % self.check_every == 0:
            self.check()

    def mapping(self, text: bytes, names: bool = False) -> None:
        with tempfile.NamedTemporaryFile("wb", suffix=".yml") as f:
            f.write(text)
            f.flush()
            t = time.monotonic()
            try:
                rules = load_rules(f.name)
            except MappingError:
                self.mappings_refused += 1
                return
            finally:
                self.slowest_load = max(self.slowest_load, self._took(t, "loading a mapping file"))
        self.mappings_loaded += 1
        self.mapper = Mapper(rules)
        if names:  # adversarial names through every rule
            for name in NAMES:
                for kind in ("c", "ms"):
                    t = time.monotonic()
                    self.mapper.map(Key(name, kind, 1.0, ()))
                    self.slowest_map = max(self.slowest_map, self._took(t, f"mapping {name[:20]!r}..."))
                    self.names_mapped += 1
        self.ingest.reload(self.mapper)

    def _took(self, since: float, what: str) -> float:
        took = time.monotonic() - since
        if took > self.slow:
            raise AssertionError(f"{what} took {took:.1f} s (unbounded work)")
        return took

    def structured(self, data: bytes) -> bytes:
        """A mapping file built from the input's bytes out of hostile parts."""
        fdp = atheris.FuzzedDataProvider(data)
        out = ["defaults:\n  shared:\n"]
        fan = fdp.ConsumeIntInRange(1, 12)
        for i in range(fdp.ConsumeIntInRange(0, 9)):  # anchors, each list repeating the one before
            items = [f"*a{i - 1}" if i else str(fdp.ConsumeIntInRange(0, 9))] * fan
            out.append(f"  - &a{i} [{', '.join(items)}]\n")
        depth = fdp.ConsumeIntInRange(0, 100)
        out.append("  - " + "[" * depth + "1" + "]" * depth + "\n")
        out.append("mappings:\n")
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            regex = "".join(REGEX_PARTS[fdp.ConsumeIntInRange(0, len(REGEX_PARTS) - 1)]
                            for _ in range(fdp.ConsumeIntInRange(1, 8)))
            glob = fdp.ConsumeBool()
            match = "".join(fdp.PickValueInList(["*", "a", ".", "b", "--", "é"]) for _ in range(4)) if glob else regex
            rule = {"match": match, "name": fdp.PickValueInList(TEMPLATES) + fdp.PickValueInList(TEMPLATES)}
            if not glob:
                rule["match_type"] = "regex"
            text = "- " + yaml.safe_dump(rule, default_flow_style=True, width=1 << 20).strip()[:-1]
            if fdp.ConsumeBool():
                text += f", labels: {{k: '{fdp.PickValueInList(TEMPLATES)}'}}"
            if fdp.ConsumeBool() and fan:
                text += f", histogram_options: {{buckets: *a{fdp.ConsumeIntInRange(0, 9)}}}"
            out.append(text + "}\n")
        return "".join(out).encode() + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))

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
    data = [*SEED_LINES, *(b"\x00" + m for m in SEED_MAPPINGS), *(b"\x02" + bytes([i]) * 64 for i in range(0, 256, 17))]
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
    ap.add_argument("--slow", type=float, default=2.0, help="seconds a mapping load or a name's mapping may take")
    args, rest = ap.parse_known_args()
    logging.basicConfig(level=logging.ERROR)  # the mapper's warnings about fuzzed keys are expected
    if expfmt._build() is None:
        sys.exit("fuzz_bridge: Prometheus' Go parser cannot be built (scripts/system-deps.sh installs Go)")
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-bridge-"))
    fz = Fuzz(args.check_every, args.go_every, corpus, args.slow)
    seeds(corpus)
    start = time.monotonic()
    deadline = start + args.seconds

    def report() -> None:
        took = time.monotonic() - start
        print(f"\nfuzz_bridge: {fz.inputs:,} inputs in {took:.0f} s ({fz.inputs / max(took, 1e-9):,.0f}/s); "
              f"findings {fz.findings}; expositions checked {fz.checked:,} "
              f"(Prometheus' Go parser {fz.go_checked:,}), invalid {fz.invalid}; mapping files loaded "
              f"{fz.mappings_loaded:,}, refused with a one-line error {fz.mappings_refused:,} "
              f"({fz.structured_files:,} built from hostile parts; {fz.names_mapped:,} adversarial names mapped); "
              f"slowest load {fz.slowest_load * 1000:.0f} ms, slowest name {fz.slowest_map * 1000:.1f} ms", flush=True)

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
