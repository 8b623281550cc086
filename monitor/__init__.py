"""airflow-monitor: observability and self-healing for Apache Airflow 3.x.

The rooms of the house and the one-way arrows between them (tests/unit/test_architecture.py walks
every import, lazy ones included, and fails when one runs the wrong way):

    cli ─────────────► serve                      argument parsing; lazy dispatch
                        │  the composition root: bridge + SLA watcher + healer, one /metrics;
                        │  `sla run`, `heal run` (worker: schedules; http: the port)
        ┌───────────────┼──────────────────┬──────────────┐
        ▼               ▼                  ▼              ▼
      bridge           sla                heal          worker
   statsd in,      producer of         producer of     a producer's cycle
   Prometheus/     alerts: SLA rules,  alerts: rules,  and outbox on a
   Datadog out     watcher             budget, healer  schedule
        │            │     │            │   │   │         │
        │            ▼     ▼            ▼   │   ▼         │
        │        airflow  alerting ◄──────  │  kube       │
        │        REST,    alert record,     │  client,    │
        │        models   store+outbox,     ▼  Lease,     │
        │                 delivery,       probe models    │
        │                 notifiers,      (rules and DB   │
        │                 notify: config   readers, stdlib│
        ▼                                  only)          ▼
      catalog (the metric catalog)        http: the one HTTP layer (TLS, basic auth,
                                          deadlines, caps, health and readiness)
    shared below everything: config, errors, durations, redact

- Data types sit below their users: Airflow's (Dag, Run) in airflow/models.py, the Kubernetes
  observation types (Pod, Container, Event) in kube/models.py; rules import them, never the reverse.
- Rules (sla/rules.py, sla/windows.py, heal/rules.py, heal/budget.py, probe/rules.py) are pure:
  no I/O, no clock; the access layers (airflow/rest.py, kube/client.py, probe/db.py) never import rules.
- The SLA watcher and the healer never import each other; alerting knows neither.
"""

__version__ = "0.1.0"
