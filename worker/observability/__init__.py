"""Metrics, structured logs and the /metrics /livez /readyz endpoints."""
