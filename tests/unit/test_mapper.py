import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.bridge.mapper import Mapper, MappingError, load_rules, parse_duration


def rules(tmp_path, text):
    p = tmp_path / "mapping.yml"
    p.write_text(textwrap.dedent(text))
    return load_rules(p)


def test_user_rules_win_and_support_statsd_exporter_features(tmp_path, harness):
    r = rules(tmp_path, """
        defaults:
          ttl: 10m
          histogram_options:
            buckets: [1, 10]
        mappings:
          - match: airflow.dag.*.*.duration
            name: my_task_seconds
            labels: {dag: "$1", task: "${2}"}
          - match: 'airflow\\.pool\\.open_slots\\.(.*)'
            match_type: regex
            name: pool_free
            labels: {pool: "$1"}
            ttl: 30s
          - match: airflow.ti_successes
            match_metric_type: gauge
            name: never_used
          - match: airflow.scheduler_heartbeat
            action: drop
          - match: airflow.dagbag_size
            name: dagbag
            histogram_options:
              buckets: [5]
          - match: team.*.rows
            name: team_rows_total
            labels: {table: "$1"}
    """)
    h = harness(mapper=Mapper(r))
    h.send("airflow.dag.d.t.duration:2000|ms", "airflow.pool.open_slots.p:4|g",
           "airflow.ti_successes:1|c", "airflow.scheduler_heartbeat:1|c", "airflow.dagbag_size:3|g",
           "team.orders.rows:5|c", "ops.jobs.total:2|c")
    h.ingest.housekeeping(h.now + 2)  # Airflow's legacy forms wait (1 s at most) for their tagless twins
    assert h.value("my_task_seconds_bucket", dag="d", task="t", le="10.0") == 1
    assert h.value("my_task_seconds_bucket", dag="d", task="t", le="1.0") == 0
    assert h.value("pool_free", pool="p") == 4
    assert h.value("airflow_ti_successes_total") == 1  # counter does not match a gauge-only rule
    assert h.samples("airflow_scheduler_heartbeat_total") == {}
    assert h.ingest.stats.dropped["drop_rule"] == 1
    assert h.value("dagbag") == 3
    # a counter named with _total (as statsd_exporter users write it) gets no second suffix
    assert h.value("team_rows_total", table="orders") == 5 and h.samples("team_rows_total_total") == {}
    assert h.value("ops_jobs_total") == 2 and h.samples("ops_jobs_total_total") == {}
    assert r[0].ttl == 600 and [x for x in r if not x.glob][0].ttl == 30  # globs are tried first


@pytest.mark.parametrize("text, msg", [
    ("mappings: [{name: x}]", "needs a 'match'"),
    ("mappings: [{match: a.b}]", "needs a 'name'"),
    ("mappings: [{match: '(', match_type: regex, name: x}]", "invalid regex"),
    ("mappings: [{match: a, name: x, action: explode}]", "action must be"),
    ("mappings: [{match: a, name: x, ttl: soon}]", "invalid duration"),
    ("mappings: [{match: a, name: x, labels: {'bad-label': v}}]", "invalid label name"),
    ("mappings: [{match: a, name: x, histogram_options: {buckets: [3, 1]}}]", "increasing"),
    ("nonsense: 1", "unknown key"),
    ("mappings: [\n  - match: a\n   name: [", "not valid YAML"),
    # found by bench/fuzz_bridge.py
    (b"mappings: [{match: a, name: x\x9f}]", "not UTF-8 text (byte 29)"),
    ("mappings: [{match: a, name: x, histogram_options: {buckets: [0.5$, 1]}}]", "list of numbers"),
    ("mappings: [{match: a, name: x, histogram_options: [1, 2]}]", "histogram_options must be a mapping"),
    ("1: x\nz: y", "unknown key '1'"),
    # hostile input N5, N6, N8: refused by rule, in one line, before anything is built
    ("mappings: [{match: '(a)\\1', match_type: regex, name: x}]", "backreferences need backtracking"),
    ("mappings: [{match: 'a(?=b)', match_type: regex, name: x}]", "lookaround"),
    ("mappings: [{match: 'a{4294967296}', match_type: regex, name: x}]", "over 1000"),
    ("mappings: [{match: '((a{1000}){1000}){1000}', match_type: regex, name: x}]", "invalid regex"),
    ("mappings: " + "[" * 20_000 + "]" * 20_000, "nested more than 64 levels"),
    ("h: &h [1, 2]\n" + "".join(f"h{i}: &h{i} [{', '.join([f'*h{i - 1}' if i else '*h'] * 10)}]\n"
                                for i in range(8))
     + "mappings: [{match: a, name: x, histogram_options: {buckets: *h7}}]", "expands to more than 1,000,000"),
    ("a: &a [*a]", "refers to a node that contains it"),
    ("mappings: [{match: a, name: x, scale: .inf}]", "finite number"),
    ("mappings: [{match: a, name: x, histogram_options: {buckets: [1, .nan]}}]", "finite numbers"),
    ("mappings: [{match: [a, b], name: x}]", "match must be a string"),
    ("mappings: {match: a}", "mappings must be a list"),
])
def test_invalid_mapping_files_say_why_in_one_line(tmp_path, text, msg):
    p = tmp_path / "m.yml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MappingError) as e:
        load_rules(p)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path):
    from monitor.bridge import boundedyaml

    p = tmp_path / "m.yml"
    p.write_bytes(b"mappings:\n" + b"- {match: a.b, name: x}\n" * (boundedyaml.MAX_BYTES // 24 + 1))
    with pytest.raises(MappingError, match="larger than 1,048,576 bytes"):
        load_rules(p)


def test_an_error_message_shows_a_bounded_part_of_what_is_wrong(tmp_path):
    """A bucket list of 100,000 lists made of aliases: the message shows a few, not all of them."""
    p = tmp_path / "m.yml"
    p.write_text("defaults:\n  shared:\n  - &a [[1], [2], [3], [4], [5], [6], [7], [8], [9], [10]]\n"
                 "  - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n  - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                 "  - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                 "  - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                 "mappings: [{match: a, name: x, histogram_options: {buckets: *e}}]\n")
    with pytest.raises(MappingError, match="list of numbers") as e:
        load_rules(p)
    assert len(str(e.value)) < 500


def test_a_template_naming_a_group_the_match_lacks_expands_to_nothing(tmp_path, harness, caplog):
    """Hostile input N6: `$99999999999999999999` made the first matching line raise out of ingest.
    As in statsd_exporter, a group the match does not capture expands to nothing; it is said at load."""
    with caplog.at_level("WARNING"):
        r = rules(tmp_path, """
            mappings:
              - match: 'app\\.(.*)'
                match_type: regex
                name: "app_$99999999999999999999999999_${1}"
                labels: {x: "${2}", y: "$1"}
        """)
    assert any("$99999999999999999999999999" in m.getMessage() and "expands to nothing" in m.getMessage()
               for m in caplog.records)
    h = harness(mapper=Mapper(r))
    h.send("app.rows:1|c", "app.rows:2|c")
    # Go's regexp.Expand reads `$999..._` (the `_` included) as one name, which no group has
    assert h.value("app_rows_total", y="rows") == 3
    assert not h.ingest.stats.internal_errors


def test_regexes_run_in_linear_time_with_statsd_exporter_semantics(tmp_path, harness):
    """Hostile input N5: statsd_exporter's README regex backtracks for seconds in Python's re on a
    1,000-byte name (the process test holds ingest to a deadline); here it is RE2, as Go's regexp:
    searched anywhere, with $n expansion, as statsd_exporter."""
    r = rules(tmp_path, """
        mappings:
          - match: '(.*)\\.(.*)--(.*)\\.status\\.(.*)\\.count'
            match_type: regex
            name: "request_total"
            labels: {service: "$1", code: "${4}"}
    """)
    h = harness(mapper=Mapper(r))
    h.send("a.b" * 333 + "x:1|c", *(f"{'a.' * 490}{i}:1|c" for i in range(20)))  # no match, no stall
    h.send("web.api--get.status.500.count:2|c", "web.api--get.status.500.countx:1|c")
    assert h.value("request_total", service="web", code="500") == 3


def test_durations():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(45) == 45


def test_every_catalog_metric_maps_in_every_form(h):
    """Each catalog metric, sent in its tagged form with all ids, lands in its Prometheus family."""
    from monitor import catalog

    types = {"counter": "c", "gauge": "g", "timer": "ms"}
    for m in catalog.load():
        name = m.name
        for var in m.name_vars:
            name = name.replace("{" + var + "}", "X")
        tags = ",".join(f"{v}:x" for v in m.tag_vars)
        h.send(f"airflow.{name}:1|{types[m.type]}" + (f"|#{tags}" if tags else ""))
    text = h.text()
    for m in catalog.load():
        assert any(line.startswith(m.prometheus_series[0]) for line in text.splitlines()), m.name
    assert h.ingest.stats.unmapped == 0 and not h.ingest.stats.parse_errors


def test_datadog_names_cover_what_the_sink_sends(h):
    """Every Datadog name the sink emits for catalog metrics is in catalog.datadog_names()."""
    from monitor import catalog
    from monitor.bridge.datadog import DatadogSink

    h.send("airflow.task.duration:1500|ms|#dag_id:d,task_id:t", "airflow.ti.finish:1|c|#dag_id:d,task_id:t,state:ok",
           "airflow.pool.open_slots:3|g|#pool_name:p", "airflow.dagrun.duration.failed:2000|ms|#dag_id:d")
    sink = DatadogSink(h.store, target="api", api_key="k", api_host="http://127.0.0.1:9")  # nothing is sent
    sink.attach(h.ingest)
    h.send("airflow.task.duration:1500|ms|#dag_id:d,task_id:t", "airflow.dagrun.duration.failed:2000|ms|#dag_id:d")
    sink.drain()
    sink._look()
    names = {p[0] for p in sink.collect()}
    assert names and names <= catalog.datadog_names(), names - catalog.datadog_names()
    assert {"airflow.dagrun.duration.failed.avg", "airflow.dagrun.duration.failed.95percentile"} <= names


# statsd_exporter 0.27's mapping semantics (pkg/mapper/mapper.go, pkg/exporter/exporter.go), line by line
SE_CASES = [
    # (mapping file, line, expected {sample: value} that must appear, sample names that must not)
    ("- match: 'rows'\n  match_type: regex\n  name: found_anywhere\n",
     "db.rows.read:1|c", {"found_anywhere_total": 1}, []),  # a regex is searched, not anchored
    ("- match: '^rows$'\n  match_type: regex\n  name: anchored\n",
     "db.rows.read:1|c", {"db_rows_read_total": 1}, ["anchored_total"]),
    ("- match: '.'\n  match_type: regex\n  action: drop\n",  # README: drop everything
     "airflow.ti.finish:1|c", {}, ["airflow_ti_finish_total"]),
    ("- match: 'a\\.(.*)'\n  match_type: regex\n  name: regex_first_in_file\n- match: a.*\n  name: glob_wins\n",
     "a.b:1|c", {"glob_wins_total": 1}, ["regex_first_in_file_total"]),  # every glob before any regex
    ("- match: a.*\n  name: first\n- match: a.b\n  name: second\n",
     "a.b:1|c", {"first_total": 1}, ["second_total"]),  # globs in file order by default
    ("defaults:\n  glob_disable_ordering: true\nmappings:\n- match: a.*\n  name: wild\n- match: a.b\n  name: exact\n",
     "a.b:1|c", {"exact_total": 1}, ["wild_total"]),  # unordered: the most specific glob
    ("- match: t.*\n  name: scaled\n  scale: 0.5\n", "t.x:10|ms", {"scaled_sum": 0.005}, []),  # after ms -> s
    ("- match: g.*\n  name: g_scaled\n  scale: 1000\n", "g.x:3|g", {"g_scaled": 3000}, []),
    ("- match: c.*\n  name: c_scaled\n  scale: 2\n", "c.x:3|c|@0.5", {"c_scaled_total": 12}, []),
    ("- match: h.*\n  name: honored\n  honor_labels: true\n  labels: {env: from_rule}\n",
     "h.x:1|c|#env:from_line", {'honored_total{env="from_line"}': 1}, []),
    ("- match: h.*\n  name: not_honored\n  labels: {env: from_rule}\n",
     "h.x:1|c|#env:from_line", {'not_honored_total{env="from_rule"}': 1}, []),
    ("- match: nomatch\n  name: x\n", "web--server.hits:1|c", {"web_server_hits_total": 1}, []),  # escaping
    ("- match: 'x\\.(.*)\\.(.*)'\n  match_type: regex\n  name: '${1}_$2'\n  labels: {all: '$0'}\n",
     "x.a.b:1|c", {'a_b_total{all="x.a.b"}': 1}, []),
    # issue 23 item 5: Go's YAML reads `1e-6` as a number (PyYAML as a string)
    ("- match: grpc.*.latency_us\n  name: grpc_seconds\n  scale: 1e-6\n", "grpc.a.latency_us:2000000|g",
     {"grpc_seconds": 2}, []),
    # `$1_foo` is the one name `1_foo` in Go's regexp.Expand and in the glob formatter: empty, label dropped
    ("- match: 'rx\\.(.*)'\n  match_type: regex\n  name: 'rx_$1_foo'\n  labels: {k: '$1_foo'}\n",
     "rx.a:1|c", {"rx__total": 1}, ["rx_a_foo_total"]),
    ("- match: 'g.*'\n  name: 'g_$1_foo'\n  labels: {k: '$1_foo', w: '${1}_w'}\n",
     "g.a:1|c", {'g__total{w="a_w"}': 1}, ["g_a_foo_total"]),
    # a glob's `$0` is nothing in statsd_exporter's formatter (captures count from 1); `$$` is `$` in Go's Expand
    ("- match: 'h.*'\n  name: 'h_${1}_$0'\n", "h.a:1|c", {"h_a__total": 1}, []),
    ("- match: 'd\\.(.*)'\n  match_type: regex\n  name: 'd'\n  labels: {k: 'x$$1'}\n", "d.a:1|c",
     {'d_total{k="x$1"}': 1}, []),
]


@pytest.mark.parametrize("mapping,line,want,absent", SE_CASES)
def test_statsd_exporter_mapping_semantics(tmp_path, harness, mapping, line, want, absent):
    body = mapping if mapping.startswith("defaults") else "mappings:\n" + mapping
    path = tmp_path / "m.yml"
    path.write_text(body)
    h = harness(mapper=Mapper(load_rules(path)))
    h.send(line)
    text = h.text()
    got = {}
    for row in text.splitlines():
        if row and not row.startswith("#"):
            name, value = row.rsplit(" ", 1)
            got[name] = float(value)
    for name, value in want.items():
        assert got.get(name) == pytest.approx(value), (name, text)
    for name in absent:
        assert not any(k.split("{")[0] == name for k in got), (name, text)


def test_unsupported_keys_are_a_warning_naming_key_and_rule(tmp_path, caplog):
    path = tmp_path / "m.yml"
    path.write_text("defaults:\n  quantiles: [{quantile: 0.5, error: 0.05}]\nmappings:\n"
                    "- match: a.*\n  name: x\n  summary_options: {max_age: 1m}\n  matchtype: regex\n")
    with caplog.at_level("WARNING"):
        load_rules(path)
    lines = [r.getMessage() for r in caplog.records]
    assert any("defaults" in m and "'quantiles'" in m for m in lines), lines
    assert any("mapping #1" in m and "'summary_options'" in m for m in lines), lines
    assert any("mapping #1" in m and "unknown key 'matchtype'" in m for m in lines), lines


# Go's template grammars, as statsd_exporter 0.27 applies them (issue 23 item 5). Reference models written
# from the Go sources' behaviour: regexp.Expand (regex rules) and pkg/mapper/fsm's formatter (glob rules).
def go_expand(template: str, groups: list, names: dict) -> str:
    """regexp.(*Regexp).Expand: `$$` -> `$`; `$name`/`${name}`, name the longest run of Unicode letters,
    digits and `_`; a number (no leading zero, < 1e8) is a group, else a named group; malformed -> `$`."""
    out, t = [], template
    while "$" in t:
        before, _, t = t.partition("$")
        out.append(before)
        if t.startswith("$"):
            out.append("$")
            t = t[1:]
            continue
        s, brace = (t[1:], True) if t.startswith("{") else (t, False)
        i = 0
        while i < len(s) and (s[i].isalpha() or s[i].isdecimal() or s[i] == "_"):
            i += 1
        if i == 0 or (brace and (i >= len(s) or s[i] != "}")):
            out.append("$")
            continue
        name, rest = s[:i], s[i + 1 if brace else i:]
        num = -1
        if all("0" <= c <= "9" for c in name) and not (name[0] == "0" and len(name) > 1):
            num = int(name) if len(name) < 9 else -1
        if num >= 0:
            out.append(groups[num] or "" if num < len(groups) else "")
        elif name in names:
            out.append(groups[names[name]] or "")
        t = rest
    return "".join(out) + t


def fsm_format(template: str, captures: list[str]) -> str | None:
    """pkg/mapper/fsm's TemplateFormatter: each match of `\\$\\{?([a-zA-Z0-9_\\$]+)\\}?` is replaced, all its
    occurrences at once (strings.Replace), by `%s` if its word is a capture number 1..n, else by nothing;
    then fmt.Sprintf. None where Go's Sprintf would print %!s(MISSING) or %!(EXTRA ...)."""
    import re as _re

    matches = _re.findall(r"(\$\{?([a-zA-Z0-9_$]+)\}?)", template)
    if not matches:
        return template
    fmt, idx = template, []
    for whole, word in matches:
        try:
            i = int(word) if word.isdigit() else -1
        except ValueError:
            i = -1
        if i < 1 or i > len(captures):
            fmt = fmt.replace(whole, "")
        else:
            fmt = fmt.replace(whole, "%s")
            idx.append(i - 1)
    if fmt.count("%s") != len(idx):
        return None
    for i in idx:
        fmt = fmt.replace("%s", "\x00" + captures[i] + "\x00", 1)
    return fmt.replace("\x00", "")


TOKENS = st.sampled_from(["$", "$$", "{", "}", "${", "1", "2", "0", "01", "_", "x", "foo", ".", "-", "é", "٣", "n",
                          "$1", "${1}", "$2", "${2}", "$0", "${0}", "$n", "${n}", "$1_foo", "$1$2", "${1", "$9"])
TEMPLATES = st.lists(TOKENS, max_size=8).map("".join)


@given(TEMPLATES)
def test_regex_templates_expand_as_go_regexp_expand(template):
    import re2

    from monitor.bridge.mapper import _expand, _template

    rx = re2.compile(r"(a+)(z)?(?P<n>b+)")
    m = rx.search("xaabbb")
    got = _expand(_template("t", "name", template, rx.groups, lambda _: None, False, dict(rx.groupindex)), m)
    assert got == go_expand(template, [m.group(i) for i in range(rx.groups + 1)], dict(rx.groupindex))


@given(TEMPLATES)
def test_glob_templates_expand_as_statsd_exporters_formatter(template):
    from hypothesis import assume

    from monitor.bridge.mapper import _expand, _glob_regex, _template

    want = fsm_format(template, ["aa", "bb"])
    assume(want is not None)  # Go prints %!s(MISSING): no one writes such a template on purpose
    m = _glob_regex("q.*.*").fullmatch("q.aa.bb")
    assert _expand(_template("t", "name", template, 2, lambda _: None, True), m) == want
