"""OTLP/HTTP metrics in: `POST /v1/metrics` on the bridge's OTLP port (default :4318), served by the
web process through the one HTTP layer (monitor/http: the web config's TLS and basic auth apply).

This module is the receiver's side, in the web process: it takes a request (protobuf or JSON,
plain or gzip), decodes it with the `opentelemetry-proto` package within bounds, and flattens it
into compact records that the ingest process applies to the store (monitor/bridge/otlpmap.py
decides the series from the catalog). The answer waits for ingest, so that a partial success
counts every point the bridge refused, whoever refused it.

Answers, as OTLP/HTTP specifies (opentelemetry-proto docs/specification.md):
  200  ExportMetricsServiceResponse, in the request's encoding; `partial_success` set, with the
       number of points rejected and why, when some were (the client must not retry those)
  400  a body that cannot be decoded (google.rpc.Status, in the request's encoding; not retried)
  413  a body over the limit, before or after decompression (not retried)
  415  a content type or encoding that is not OTLP's
  503  the ingest process did not take the data in time (retried by the client, Retry-After)
Every refusal is counted by reason (airflow_monitor_bridge_otlp_requests_total{outcome} and
..._otlp_rejected_points_total{reason}).

Every answer closes its connection (`Connection: close`). The OpenTelemetry SDK restarts its exporting
thread in a forked child, and the child then writes into the keep-alive connection its parent left in
its pool: Airflow's LocalExecutor forks its workers from the scheduler, and two processes' requests
came interleaved on one connection (a body cut short, then a request line behind its tail: 400 and
405 in the scheduler's log). A connection per export costs a handshake every export interval.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from monitor.http.server import Request, Response

log = logging.getLogger("airflow_monitor.otlp")

PATH = "/v1/metrics"
PROTOBUF, JSON = "application/x-protobuf", "application/json"
MAX_LABEL_VALUE = 1024  # as a statsd tag value (monitor/bridge/parse.py)
# points per record frame shipped to ingest: ingest applies one frame between two reads of the statsd
# sockets, a few milliseconds at most (a pod's default UDP buffer holds ~4 ms of 100k lines/s)
FRAME_POINTS = 500
# what each kind of metric becomes: kind names the records carry
SUM_CUMULATIVE, SUM_DELTA, GAUGE, UPDOWN_CUMULATIVE, UPDOWN_DELTA = "sum_c", "sum_d", "gauge", "updown_c", "updown_d"
EXPHIST_CUMULATIVE, EXPHIST_DELTA, HIST_CUMULATIVE, HIST_DELTA = "exph_c", "exph_d", "hist_c", "hist_d"
DELTA, CUMULATIVE = 1, 2  # AggregationTemporality
GRPC = {400: 3, 413: 8, 415: 3, 503: 14}  # google.rpc.Code for the Status body (INVALID_ARGUMENT, ...)


@dataclass
class Limits:
    max_body: int = 64 << 20  # bytes, before and after decompression
    max_points: int = 1_000_000  # data points per request; more are rejected (partial success)
    max_attributes: int = 64  # attributes per data point; a point with more is rejected


class Refused(Exception):
    """The whole request is refused: its HTTP status, the reason it is counted under, and a message."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class Unavailable(Exception):
    """Ingest did not take the data in time (503, retried by the client)."""


# ---------------------------------------------------------------- decoding
def _media(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def inflate(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise Refused(400, "bad_gzip", f"the gzip body cannot be read: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise Refused(413, "too_large", f"the body is over {limit} bytes once decompressed")
    if not d.eof:
        raise Refused(400, "bad_gzip", "the gzip body is truncated")
    return out


def _strip_exemplars(doc) -> None:
    """OTLP/JSON writes traceId and spanId in hex, not the base64 of protobuf's JSON mapping; the
    bridge has no use for exemplars, so they go before the standard JSON parser sees them."""
    if isinstance(doc, dict):
        doc.pop("exemplars", None)
        for v in doc.values():
            _strip_exemplars(v)
    elif isinstance(doc, list):
        for v in doc:
            _strip_exemplars(v)


def decode(body: bytes, content_type: str, content_encoding: str, limits: Limits):
    """An ExportMetricsServiceRequest from an HTTP body; raises Refused."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    media = _media(content_type)
    if media not in (PROTOBUF, JSON):
        raise Refused(415, "unsupported_media_type",
                      f"Content-Type {content_type or '(none)'!r} is not OTLP's: send {PROTOBUF} or {JSON}")
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        body = inflate(body, limits.max_body)
    elif encoding not in ("", "identity"):
        raise Refused(415, "unsupported_encoding", f"Content-Encoding {content_encoding!r}: only gzip is taken")
    if len(body) > limits.max_body:
        raise Refused(413, "too_large", f"the body is over {limits.max_body} bytes")
    msg = ExportMetricsServiceRequest()
    if media == PROTOBUF:
        try:
            msg.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise Refused(400, "decode_error", f"the protobuf body cannot be decoded: {e}") from None
        return msg
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("the JSON body is not an object")
        _strip_exemplars(doc)
        json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError, RecursionError) as e:
        raise Refused(400, "decode_error", f"the JSON body cannot be decoded: {str(e)[:300]}") from None
    return msg


def value_text(v) -> str:
    """An attribute's AnyValue as a label value (as Prometheus' OTLP translation writes it)."""
    case = v.WhichOneof("value")
    if case == "string_value":
        return v.string_value
    if case == "bool_value":
        return "true" if v.bool_value else "false"
    if case == "int_value":
        return str(v.int_value)
    if case == "double_value":
        d = v.double_value
        return repr(d) if not d.is_integer() or abs(d) >= 1e16 else str(int(d))
    if case == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if case in ("array_value", "kvlist_value"):
        return json.dumps(_plain(v), separators=(",", ":"))
    return ""


def _plain(v):
    case = v.WhichOneof("value")
    if case == "array_value":
        return [_plain(x) for x in v.array_value.values]
    if case == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in v.kvlist_value.values}
    if case == "string_value":
        return v.string_value
    if case == "bool_value":
        return v.bool_value
    if case == "int_value":
        return v.int_value
    if case == "double_value":
        return v.double_value
    return value_text(v)


# ---------------------------------------------------------------- flattening
OVERFLOW = ("otel.metric.overflow", "true")  # the OTel SDK's point for attribute sets over its cardinality limit


class Flat:
    """A request as records for ingest, and what was rejected here."""

    def __init__(self):
        self.groups: list[tuple] = []  # (resource, pod, name, kind, unit, [points])
        self.points = 0  # points taken
        self.rejected: Counter[str] = Counter()  # points rejected here, by reason
        # metrics with an overflow point -> the attribute sets of their other points (see otlpmap)
        self.overflow: dict[str, frozenset] = {}


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def instance(resource: tuple[tuple[str, str], ...]) -> str:
    """The per-pod label value of a resource: service.instance.id, else host.name (Airflow's docs
    set OTEL_RESOURCE_ATTRIBUTES=service.instance.id=$(hostname)). The OpenTelemetry SDK (1.45) gives
    every process a random UUID as service.instance.id when none is set, and again after a fork: such
    a value names a process, not a pod, and would make a new series of every task run; it is no label."""
    d = dict(resource)
    iid = d.get("service.instance.id", "")
    if _UUID.match(iid):
        iid = ""
    return iid or d.get("host.name") or ""


def flatten(req, limits: Limits) -> Flat:
    out = Flat()
    budget = limits.max_points
    for rm in req.resource_metrics:
        resource = tuple(sorted((kv.key, value_text(kv.value)) for kv in rm.resource.attributes))
        pod = instance(resource)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                case = metric.WhichOneof("data")
                if case is None:
                    continue
                data = getattr(metric, case)
                dps = data.data_points
                n = len(dps)
                if case == "summary":
                    out.rejected["unsupported_type"] += n
                    continue
                if case == "gauge":
                    kind = GAUGE
                else:
                    t = data.aggregation_temporality
                    if t not in (DELTA, CUMULATIVE):
                        out.rejected["invalid_temporality"] += n
                        continue
                    if case == "sum":
                        kind = (SUM_CUMULATIVE if t == CUMULATIVE else SUM_DELTA) if data.is_monotonic else \
                            (UPDOWN_CUMULATIVE if t == CUMULATIVE else UPDOWN_DELTA)
                    elif case == "histogram":
                        kind = HIST_CUMULATIVE if t == CUMULATIVE else HIST_DELTA
                    else:
                        kind = EXPHIST_CUMULATIVE if t == CUMULATIVE else EXPHIST_DELTA
                if n > budget:
                    out.rejected["too_many_points"] += n - budget
                    n = budget
                if not n:
                    continue
                budget -= n
                points = _points(dps, n, kind, limits, out.rejected)
                if points:
                    out.points += len(points)
                    out.groups.append((resource, pod, metric.name, kind, metric.unit, points))
                    if any(OVERFLOW in p[0] for p in points):
                        seen = out.overflow.get(metric.name, frozenset())
                        out.overflow[metric.name] = seen | frozenset(p[0] for p in points if OVERFLOW not in p[0])
    return out


def _attrs(dp, limits: Limits, rejected: Counter) -> tuple | None:
    attrs = dp.attributes
    if len(attrs) > limits.max_attributes:
        rejected["too_many_attributes"] += 1
        return None
    out = []
    for kv in attrs:
        v = kv.value
        text = v.string_value if v.WhichOneof("value") == "string_value" else value_text(v)
        if len(text) > MAX_LABEL_VALUE:
            rejected["label_value_too_long"] += 1
            return None
        if not kv.key:
            rejected["invalid_attribute"] += 1
            return None
        out.append((kv.key, text))
    out.sort()
    return tuple(out)


def _points(dps, n: int, kind: str, limits: Limits, rejected: Counter) -> list[tuple]:
    out = []
    isfinite = math.isfinite
    for i in range(n):
        dp = dps[i]
        if dp.flags & 1:  # NO_RECORDED_VALUE: a stale marker, nothing to count
            rejected["no_recorded_value"] += 1
            continue
        attrs = _attrs(dp, limits, rejected)
        if attrs is None:
            continue
        if kind in (EXPHIST_CUMULATIVE, EXPHIST_DELTA):
            total = dp.sum if dp.HasField("sum") else 0.0
            if not isfinite(total) or not isfinite(dp.zero_threshold) or not -10 <= dp.scale <= 20:
                rejected["invalid_value" if not isfinite(total) else "unsupported_scale"] += 1
                continue
            out.append((attrs, dp.start_time_unix_nano, dp.count, total, dp.scale, dp.zero_count,
                        dp.zero_threshold, dp.positive.offset, tuple(dp.positive.bucket_counts),
                        dp.negative.offset, tuple(dp.negative.bucket_counts)))
        elif kind in (HIST_CUMULATIVE, HIST_DELTA):
            total = dp.sum if dp.HasField("sum") else 0.0
            bounds = tuple(dp.explicit_bounds)
            counts = tuple(dp.bucket_counts)
            if not isfinite(total) or (counts and len(counts) != len(bounds) + 1) or \
                    any(not isfinite(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
                rejected["invalid_value"] += 1
                continue
            out.append((attrs, dp.start_time_unix_nano, dp.count, total, bounds, counts))
        else:
            case = dp.WhichOneof("value")
            if case is None:
                rejected["no_value"] += 1
                continue
            v = float(dp.as_double if case == "as_double" else dp.as_int)
            if not isfinite(v) or (kind in (SUM_CUMULATIVE, SUM_DELTA) and v < 0):
                rejected["invalid_value"] += 1
                continue
            out.append((attrs, dp.start_time_unix_nano, v))
    return out


def frames(groups: list[tuple], size: int = FRAME_POINTS) -> list[list[tuple]]:
    """Groups cut into frames of about `size` points (a group larger than that is split)."""
    out: list[list[tuple]] = [[]]
    n = 0
    for g in groups:
        points = g[5]
        for i in range(0, len(points), size):
            part = points[i : i + size]
            if n + len(part) > size and out[-1]:
                out.append([])
                n = 0
            out[-1].append((*g[:5], part))
            n += len(part)
    return out


# ---------------------------------------------------------------- answers
def _pb_field(num: int, payload: bytes) -> bytes:
    from monitor.bridge.protobuf import varint

    return varint(num << 3 | 2) + varint(len(payload)) + payload


def status_body(status: int, message: str, media: str) -> tuple[bytes, str]:
    """google.rpc.Status{code, message} in the request's encoding."""
    from monitor.bridge.protobuf import varint

    code = GRPC.get(status, 2)
    if media == JSON:
        return json.dumps({"code": code, "message": message}).encode(), JSON
    return b"\x08" + varint(code) + _pb_field(2, message.encode()), PROTOBUF


def success_body(rejected: int, message: str, media: str) -> tuple[bytes, str]:
    """ExportMetricsServiceResponse: partial_success{rejected_data_points, error_message} when set."""
    from monitor.bridge.protobuf import varint

    if media == JSON:
        doc = {"partialSuccess": {"rejectedDataPoints": str(rejected), "errorMessage": message}} if message else {}
        return json.dumps(doc).encode(), JSON
    if not message:
        return b"", PROTOBUF
    inner = (b"\x08" + varint(rejected) if rejected else b"") + _pb_field(2, message.encode())
    return _pb_field(1, inner), PROTOBUF


REASONS = {  # why points are rejected, said to the client (partial success) and counted
    "unsupported_type": "summaries are not taken (Airflow sends none)",
    "invalid_temporality": "an unspecified aggregation temporality",
    "too_many_points": "more data points in one request than --otlp-max-points",
    "too_many_attributes": "more attributes on a point than --otlp-max-attributes",
    "label_value_too_long": f"an attribute value over {MAX_LABEL_VALUE} characters",
    "invalid_attribute": "an attribute with an empty key",
    "invalid_value": "a value that is not finite, a negative counter or inconsistent histogram buckets",
    "unsupported_scale": "an exponential histogram scale outside -10..20",
    "no_value": "a number data point without a value",
    "no_recorded_value": "a point flagged NO_RECORDED_VALUE",
}


def explain(rejected: Counter) -> str:
    parts = [f"{n} {REASONS.get(r, r)}" for r, n in sorted(rejected.items()) if n]
    return "points rejected: " + "; ".join(parts) if parts else ""


class Receiver:
    """The OTLP port's HTTP application. `submit(frames)` hands the records to ingest and returns the
    points it refused, by reason (raises Unavailable when ingest does not answer in time)."""

    def __init__(self, submit: Callable[[list[list[tuple]], tuple], Counter], limits: Limits | None = None):
        self.submit = submit
        self.limits = limits or Limits()
        self.requests: Counter[str] = Counter()  # by outcome: ok, partial, or the reason of a refusal
        self.points = 0  # points taken into the store
        self.rejected: Counter[str] = Counter()  # points rejected, by reason
        self.lock = threading.Lock()  # one request decoded at a time: bounds the memory decoding takes
        self.logged: dict[str, float] = {}  # reason -> when a refusal for it was last logged

    def _refused(self, req: Request, reason: str, message: str) -> None:
        """Count a refusal; say it in one line, at most once a minute per reason."""
        import time

        self.requests[reason] += 1
        now = time.monotonic()
        if now - self.logged.get(reason, -math.inf) >= 60:
            self.logged[reason] = now
            log.warning("OTLP %s %s from %s (%s) refused, %s: %s (at most one line a minute per reason)",
                        req.method, req.path[:100], req.client, req.header("user-agent")[:100] or "no user agent",
                        reason, message[:300])

    def __call__(self, req: Request) -> Response:
        if req.path != PATH:
            self._refused(req, "not_found", "not an OTLP metrics path")
            return Response(404, f"{req.path}: not served here; OTLP metrics go to POST {PATH}\n".encode())
        media = _media(req.header("content-type"))
        media = media if media in (PROTOBUF, JSON) else PROTOBUF
        if req.method != "POST":
            self._refused(req, "method_not_allowed", "OTLP metrics are POSTed")
            return Response(405, f"{req.method} {PATH}: OTLP metrics are POSTed\n".encode(),
                            headers=[("Allow", "POST")])
        try:
            with self.lock:
                msg = decode(req.body, req.header("content-type"), req.header("content-encoding"), self.limits)
                flat = flatten(msg, self.limits)
                del msg
            # ingest tells a legacy twin by its tagged form's name (and, past the SDK's cardinality limit, its ids)
            names = (frozenset(g[2] for g in flat.groups), flat.overflow)
            refused = self.submit(frames(flat.groups), names) if flat.groups else Counter()
        except Refused as e:
            self._refused(req, e.reason, e.message)
            body, ctype = status_body(e.status, e.message, media)
            return Response(e.status, body, content_type=ctype, close=e.status == 413)
        except Unavailable as e:
            self._refused(req, "unavailable", str(e))
            body, ctype = status_body(503, str(e), media)
            return Response(503, body, content_type=ctype, headers=[("Retry-After", "5")])
        rejected = flat.rejected + refused
        n = sum(rejected.values())
        self.points += flat.points - sum(refused.values())
        self.rejected.update(rejected)
        self.requests["partial" if n else "ok"] += 1
        body, ctype = success_body(n, explain(rejected), media)
        return Response(200, body, content_type=ctype, close=True)

    def metrics_lines(self, prefix: str) -> list[str]:
        """The receiver's self-metrics in the text format."""
        out = [f"# HELP {prefix}otlp_requests_total OTLP/HTTP export requests, by outcome (ok, partial, or "
               f"why the whole request was refused).",
               f"# TYPE {prefix}otlp_requests_total counter"]
        for outcome in sorted({"ok", "partial"} | set(self.requests)):
            out.append(f'{prefix}otlp_requests_total{{outcome="{outcome}"}} {self.requests.get(outcome, 0)}')
        out += [f"# HELP {prefix}otlp_points_total OTLP data points taken into the store.",
                f"# TYPE {prefix}otlp_points_total counter", f"{prefix}otlp_points_total {self.points}",
                f"# HELP {prefix}otlp_rejected_points_total OTLP data points rejected (reported to the client "
                f"as a partial success), by reason.",
                f"# TYPE {prefix}otlp_rejected_points_total counter"]
        for reason, n in sorted(self.rejected.items()):
            out.append(f'{prefix}otlp_rejected_points_total{{reason="{reason}"}} {n}')
        return out


# ---------------------------------------------------------------- the channel to ingest
class Channel:
    """The web process's end of the OTLP channel: frames of records go to the ingest process, which
    applies them and answers with the points it refused. One request at a time; an answer that does
    not come within `timeout` is a 503 (the client retries). A frame cut midway leaves the channel
    unusable: the web process exits and the bridge starts a new one with a new channel."""

    def __init__(self, sock, timeout: float = 8.0, on_broken: Callable[[], None] | None = None):
        import socket as _socket

        self.sock: _socket.socket = sock
        self.timeout = timeout
        self.lock = threading.Lock()
        self.seq = 0
        self.on_broken = on_broken

    def submit(self, frames_: list[list[tuple]], names=(frozenset(), {})) -> Counter:
        import pickle
        import time

        from monitor.bridge.web import HEADER, recv_exact

        with self.lock:
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            deadline = time.monotonic() + self.timeout
            sent_any = False
            try:
                for i, f in enumerate(frames_):
                    data = pickle.dumps((self.seq, i, len(frames_), names if i == 0 else None, f),
                                        protocol=pickle.HIGHEST_PROTOCOL)
                    self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    sent_any = True
                    self.sock.sendall(HEADER.pack(len(data)) + data)
                while True:
                    self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    (n,) = HEADER.unpack(recv_exact(self.sock, HEADER.size))
                    seq, refused = pickle.loads(recv_exact(self.sock, n))
                    if seq == self.seq:
                        return Counter(refused)
            except TimeoutError:
                if sent_any and time.monotonic() < deadline + 1:  # a frame may be cut: nothing can follow it
                    self._broken("the ingest process took the data too slowly")
                raise Unavailable(f"the bridge did not take the data within {self.timeout:.0f}s") from None
            except (OSError, EOFError) as e:
                self._broken(str(e))
                raise Unavailable(f"the bridge's ingest process does not answer: {e}") from None

    def _broken(self, why: str) -> None:
        log.error("the OTLP channel to the ingest process is broken (%s); the web process restarts", why)
        if self.on_broken is not None:
            self.on_broken()
