"""The catalog against every Airflow 3.x line on PyPI, read from the wheels: the registry where
the wheel ships one (3.2, 3.3), and for every line the metric names its code emits. A metric's
`since`, `until` and `tagged_since` must agree with what each line's wheel says."""

from __future__ import annotations

import pytest

from monitor import catalog
from tests.integration.airflow_wheels import pattern, shape, wheel

pytestmark = pytest.mark.integration
VERSIONS = ("3.0.6", "3.1.8", "3.2.2", "3.3.2")


REGISTRY_VERSIONS = ("3.2.2", "3.3.2")  # the lines whose wheel ships metrics_template.yaml


@pytest.fixture(scope="module")
def wheels():
    return {v: wheel(v) for v in VERSIONS}


@pytest.fixture(params=VERSIONS)
def wheel_of(request, wheels):
    return wheels[request.param]


def forms(m: catalog.Metric, version: str) -> set[str]:
    """The names a line sends a metric under: its name (from tagged_since on) and its legacy form."""
    out = {m.legacy} if m.legacy else set()
    if m.tagged_since is None or catalog.line_of(version) >= catalog.line_of(m.tagged_since):
        out.add(m.name)
    return out


def test_only_3_2_on_ship_a_registry(wheels):
    assert {v for v, w in wheels.items() if w.registry is not None} == set(REGISTRY_VERSIONS)


@pytest.mark.parametrize("v", REGISTRY_VERSIONS)
def test_the_catalog_holds_each_lines_registry(wheels, v):
    wheel_of = wheels[v]
    ours = {m.name: m for m in catalog.load() if catalog.sent_by(m, v)}
    theirs = {}
    for r in wheel_of.registry:
        # before `tagged_since` a registry lists a metric under its one (legacy-shaped) name
        hit = [m for m in ours.values() if shape(r["name"]) in {shape(f) for f in forms(m, v)}]
        assert hit, f"Airflow {v} registers {r['name']} ({r['type']}), the catalog has nothing for it"
        assert hit[0].type == r["type"], (v, r["name"])
        theirs[hit[0].name] = r
    extra = sorted(set(ours) - set(theirs))
    assert not extra, f"the catalog says Airflow {v} sends these, its registry does not: {extra}"


def test_every_name_a_lines_code_emits_is_in_the_catalog_for_that_line(wheel_of):
    v = wheel_of.version
    names = [f for m in catalog.load() if catalog.sent_by(m, v) for f in forms(m, v)]
    missing = sorted(lit for lit in wheel_of.literals if not any(pattern(lit).match(n) for n in names))
    assert not missing, f"Airflow {v}'s code emits these, the catalog has them not for {v}: {missing}"


def test_a_metric_new_in_a_line_is_not_in_the_code_of_the_lines_before(wheel_of):
    v = wheel_of.version
    early = [m for m in catalog.load() if not catalog.sent_by(m, v) and catalog.line_of(m.since) > catalog.line_of(v)]
    assert early or v == VERSIONS[-1]
    for m in early:
        found = [lit for lit in wheel_of.literals if shape(lit) in {shape(f) for f in forms(m, m.since)}]
        assert not found, f"{m.name} is said to be new in {m.since}, yet Airflow {v} emits {found}"


def test_what_later_code_emits_and_a_line_is_said_to_send_is_in_that_lines_code(wheels):
    """Where the catalog says an older line sends a metric whose name later lines' code writes out,
    that older line's code writes it out too (else the metric is newer than the catalog says)."""
    for i, v in enumerate(VERSIONS[:-1]):
        later = {shape(lit) for w in VERSIONS[i + 1:] for lit in wheels[w].literals}
        here = {shape(lit) for lit in wheels[v].literals}
        for m in catalog.load():
            if catalog.sent_by(m, v):
                named = {shape(f) for f in forms(m, v)} & later
                assert not named or named & here, f"{m.name}: Airflow {v}'s code does not emit it (since?)"


def test_the_3_3_line_is_the_whole_catalog_but_what_ended_before():
    ended = {m.name for m in catalog.load() if m.until is not None}
    assert ended == {"kubernetes_executor.clear_not_launched_queued_tasks.duration"}
    assert {m.name for m in catalog.load() if catalog.sent_by(m, "3.3.2")} == \
        {m.name for m in catalog.load()} - ended


@pytest.fixture(scope="module")
def timed_calls():
    from tests.integration.airflow_wheels import timed

    return {v: timed(v) for v in VERSIONS}


def test_the_unit_of_every_timer_each_line_sends_is_recorded_in_the_catalog(timed_calls):
    """Issue 23 item 2: every Stats.timing()/timer() call of the core and task-SDK wheels, and the unit
    its code passes (a Stats.timer(), a timedelta, milliseconds, or time.monotonic() seconds), is in the
    catalog's `sent` for that line; what the catalog records is what a call site sends."""
    timers = [m for m in catalog.load() if m.type == "timer"]
    for v, calls in timed_calls.items():
        line = ".".join(v.split(".")[:2])
        for c in calls:
            assert c.unit != "?", f"Airflow {v} {c.where}: cannot tell the unit of {c.value!r}; audit it by hand"
            hits = [m for m in timers if any(pattern(c.name).match(f) for f in forms(m, line))]
            assert hits, f"Airflow {v} {c.where} times {c.name}, which no catalog timer matches"
            units = {m.sent.get(line) for m in hits} - {None}
            assert units == {c.unit}, (f"Airflow {v} {c.where}: {c.name} is sent as {c.unit} ({c.value or 'a timer'}), "
                                       f"the catalog says {units or 'nothing'} for {[m.name for m in hits]}")
        for m in timers:
            if line in m.sent:
                backed = [c for c in calls if any(pattern(c.name).match(f) for f in forms(m, line))]
                assert backed, f"the catalog says Airflow {line} sends {m.name} as {m.sent[line]}; no call site does"


def test_dag_processing_last_duration_is_seconds_in_every_line_that_sends_it(timed_calls):
    """The one Stats.timing() of seconds: Airflow's DAG processor passes time.monotonic() differences."""
    seconds = {(c.name, v) for v, calls in timed_calls.items() for c in calls if c.unit == "s"}
    assert {n for n, _ in seconds} <= {"dag_processing.last_duration",
                                       "dag_processing.last_duration.{normalized_bundle}.{file_name}"}
    assert {v for _, v in seconds} == {"3.2.2", "3.3.2"}
    m = next(m for m in catalog.load() if m.name == "dag_processing.last_duration")
    assert m.sent_in_seconds and not m.timer_call
