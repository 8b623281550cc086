"""`scripts/demo.sh`: airflow-monitor on a real local Airflow, narrated in the terminal."""
