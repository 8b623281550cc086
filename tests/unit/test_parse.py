import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.bridge.parse import Key, ParseError, parse_key, parse_values, split_line


def key(line: bytes) -> Key:
    head, _, tail = split_line(line)
    return parse_key(head, tail)


@pytest.mark.parametrize(
    "line, name, mtype, rate, tags",
    [
        (b"airflow.ti.finish:1|c", "airflow.ti.finish", "c", 1.0, ()),
        (b"a.b:3|c|@0.1", "a.b", "c", 0.1, ()),
        (b"t:12.5|ms", "t", "ms", 1.0, ()),
        (b"h:1|h", "h", "h", 1.0, ()),
        (b"d:1|d", "d", "d", 1.0, ()),
        (b"u:alice|s", "u", "s", 1.0, ()),
        (b"g:-3|g", "g", "g", 1.0, ()),
        (b"x:1|c|#dag_id:a.b,task_id:t", "x", "c", 1.0, (("dag_id", "a.b"), ("task_id", "t"))),
        (b"x:1|c|@0.5|#k:v|c:abc123|T1656581400", "x", "c", 0.5, (("k", "v"),)),
        (b"x,dag_id=a.b,state=ok:1|c", "x", "c", 1.0, (("dag_id", "a.b"), ("state", "ok"))),
        (b"x#dag_id=a,k=v:1|c", "x", "c", 1.0, (("dag_id", "a"), ("k", "v"))),
        (b"x[dag_id=a,k=v].rest:1|c", "x.rest", "c", 1.0, (("dag_id", "a"), ("k", "v"))),
        (b"x:1|c|#flag", "x", "c", 1.0, (("flag", ""),)),
        (b"x:1|c|#my-tag:v", "x", "c", 1.0, (("my_tag", "v"),)),
    ],
)
def test_parse_forms(line, name, mtype, rate, tags):
    assert key(line) == Key(name, mtype, rate, tags)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"nocolon", "malformed_line"),
        (b"name:1", "malformed_line"),
        (b":1|c", "malformed_line"),
        (b"x:1|zz", "unknown_type"),
        (b"x:1|c|@2", "invalid_sample_rate"),
        (b"x:1|c|@abc", "invalid_sample_rate"),
        (b"x:1|c|bogus", "malformed_line"),
        (b"x,broken:1|c", "malformed_tag"),
        (b"\xff\xfe:1|c", "invalid_utf8"),
        (b"has space:1|c", "illegal_name"),
        # as statsd_exporter 0.27 (pkg/line): one line, one tagging style
        (b"x,dag_id=a:1|c|#task_id:t", "mixed_tagging_styles"),
        (b"x#k=v:1|c|#a:b", "mixed_tagging_styles"),
        (b"x[k=v]:1|ms|#a:b", "mixed_tagging_styles"),
    ],
)
def test_parse_errors(line, reason):
    with pytest.raises(ParseError) as e:
        key(line)
    assert e.value.reason == reason


def test_values_multi_and_delta():
    assert parse_values(b"1:2:3.5", "c") == [(1.0, False), (2.0, False), (3.5, False)]
    assert parse_values(b"+4", "g") == [(4.0, True)]
    assert parse_values(b"-4", "g") == [(-4.0, True)]
    assert parse_values(b"-4", "c") == [(-4.0, False)]
    for bad in (b"nan", b"inf", b"abc", b""):
        with pytest.raises(ParseError):
            parse_values(bad, "c")


names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_.\-]{0,40}", fullmatch=True)
tagkeys = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
tagvals = st.from_regex(r"[a-zA-Z0-9_.\-]{0,12}", fullmatch=True)


@given(name=names, value=st.floats(-1e9, 1e9, allow_nan=False), mtype=st.sampled_from(["c", "g", "ms", "h", "d"]),
       tags=st.dictionaries(tagkeys, tagvals, max_size=4), style=st.sampled_from(["dog", "influx", "librato"]))
def test_roundtrip_property(name, value, mtype, tags, style):
    """Any well-formed line in any tag style parses back to what was written."""
    v = repr(value).encode()
    if style == "dog":
        line = name.encode() + b":" + v + b"|" + mtype.encode()
        if tags:
            line += b"|#" + ",".join(f"{k}:{t}" for k, t in tags.items()).encode()
    else:
        sep = "," if style == "influx" else "#"
        head = name + (sep + ",".join(f"{k}={t}" for k, t in tags.items()) if tags else "")
        line = head.encode() + b":" + v + b"|" + mtype.encode()
    head, vals, tail = split_line(line)
    k = parse_key(head, tail)
    assert k.name == name and k.type == mtype and dict(k.tags) == tags
    assert parse_values(vals, mtype)[0][0] == value


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data):
    """Arbitrary bytes either parse or raise ParseError: nothing else escapes."""
    for line in data.split(b"\n"):
        try:
            head, vals, tail = split_line(line)
            parse_key(head, tail)
            parse_values(vals, "c")
        except ParseError:
            pass
