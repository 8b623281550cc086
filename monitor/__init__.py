"""airflow-monitor: observability and self-healing for Apache Airflow 3.x."""

__version__ = "0.1.0"
