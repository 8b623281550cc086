"""What the tests, the benchmarks (bench/) and the demo (demo/) share, none of it shipped: a real
Airflow started from the cached venv (airflow), a real `airflow-monitor serve` in a subprocess
(bridge), the local stand-ins for the services we cannot reach (servers/: OpsGenie, JSM, Datadog,
a webhook, the Kubernetes API), and Prometheus' own text parser (expfmt)."""
