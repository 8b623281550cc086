"""Scheduler, triggerer and dag-processor liveness probes: pure rules plus thin DB/API glue.

The probe path imports only the standard library and a DB driver: no Airflow, no SQLAlchemy,
no prometheus-client, no YAML.
"""
