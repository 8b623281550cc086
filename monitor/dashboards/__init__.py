"""Dashboards as code: panel specs over the catalog, rendered for Grafana and Datadog."""
