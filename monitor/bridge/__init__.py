"""The metrics bridge: statsd (listener -> parse -> map) and OTLP (otlp -> otlpmap) -> store -> exposition
(render, protobuf, native) / Datadog / relay."""
