"""The statsd bridge: listener -> parse -> map -> store -> exposition / Datadog / relay."""
