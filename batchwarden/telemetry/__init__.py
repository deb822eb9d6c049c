"""Metrics (Prometheus), and later traces: counted where events happen."""
