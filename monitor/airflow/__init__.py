"""Talking to Airflow from the service side (the probe keeps its own lean readers)."""
