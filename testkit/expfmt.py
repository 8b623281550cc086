"""What Prometheus requires of an exposition. check_text: the rules its text parser enforces (one
HELP/TYPE per family, each sample under its own family's TYPE, no duplicate series, cumulative
buckets), read with prometheus-client's parser. parse: Prometheus' own Go text parser (expfmt),
testkit/tools/expfmtcheck, built once with Debian's Go and Go Prometheus libraries
(scripts/system-deps.sh installs them); missing under CI is a failure, elsewhere a skip that
says how to get it. bench/fuzz_bridge.py uses both. decode_proto: the protobuf exposition read by
Prometheus' Go decoder (testkit/tools/protocheck), each family as client_model's Go type in JSON."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

SOURCE = Path(__file__).resolve().parent / "tools" / "expfmtcheck" / "main.go"
PROTO_SOURCE = Path(__file__).resolve().parent / "tools" / "protocheck" / "main.go"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources
CACHE_BIN = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "airflow-monitor" / "bin"


@cache
def _build(source: Path = SOURCE) -> str | None:
    go = shutil.which("go")
    if go is None or not (Path(GOPATH) / "src/github.com/prometheus/common/expfmt").is_dir():
        return None
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    exe = CACHE_BIN / f"{source.parent.name}-{digest}"
    if not exe.exists():
        CACHE_BIN.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "",
               "GOCACHE": str(CACHE_BIN.parent / "go-build")}
        r = subprocess.run([go, "build", "-o", str(exe) + ".part", "."], cwd=source.parent, env=env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"building {source.parent}: {r.stderr.strip()}")
        os.replace(str(exe) + ".part", exe)
    return str(exe)


def checker(source: Path = SOURCE) -> str:
    exe = _build(source)
    if exe is None:
        msg = "Go or Debian's golang-github-prometheus-common-dev is missing (scripts/system-deps.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def decode_proto(data: bytes) -> list[dict]:
    """Prometheus' Go decoder on a delimited protobuf exposition: its families (client_model's JSON);
    AssertionError with the decoder's message if it refuses."""
    import json

    r = subprocess.run([checker(PROTO_SOURCE)], input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, f"Prometheus' decoder refuses the exposition: {r.stderr.decode().strip()}"
    return [json.loads(line) for line in r.stdout.decode().splitlines() if line]


def parse(text: str) -> str:
    """Feed the exposition to Prometheus' Go parser; AssertionError with its message if it refuses."""
    r = subprocess.run([checker()], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"Prometheus' parser refuses the exposition: {r.stderr.strip()}"
    return r.stdout


def check_text(text: str) -> dict:
    """What Prometheus requires of a scrape; returns {(sample name, labels): value}."""
    helps, types = Counter(), Counter()
    for line in text.split("\n"):  # only \n ends a line in the text format
        if line.startswith("# HELP "):
            helps[line.split()[2]] += 1
        elif line.startswith("# TYPE "):
            types[line.split()[2]] += 1
    assert all(n == 1 for n in helps.values()) and all(n == 1 for n in types.values())
    assert set(helps) == set(types)
    typed = {}
    for line in text.split("\n"):
        if line.startswith("# TYPE "):
            typed[line.split()[2]] = line.split()[3]
        elif line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            base = name.rsplit("_", 1)[0]
            # as Prometheus' text parser requires: every sample under the TYPE of its own family
            assert typed.get(name) in ("counter", "gauge") or (
                typed.get(base) == "histogram" and name[len(base):] in ("_bucket", "_sum", "_count")), line
    seen: dict = {}
    for fam in text_string_to_metric_families(text):
        buckets: dict = {}
        counts: dict = {}
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen[key] = s.value
            if fam.type == "histogram" and s.name.endswith("_bucket"):
                rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                buckets.setdefault(rest, []).append((float(s.labels["le"]), s.value))
            elif fam.type == "histogram" and s.name.endswith("_count"):
                counts[tuple(sorted(s.labels.items()))] = s.value
        for labels, bs in buckets.items():
            values = [v for _, v in sorted(bs)]
            assert values == sorted(values), f"buckets not cumulative for {labels}"
            assert sorted(bs)[-1][0] == float("inf") and values[-1] == counts[labels]
    return seen
