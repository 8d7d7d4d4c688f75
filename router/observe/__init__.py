"""Observability: what one request did (its record), Prometheus metrics, request log lines,
the read model of the router's state and its renderings (``/status``, ``ctxroute status``)."""
