"""ctxroute: a context-aware routing load balancer for vLLM fleets."""

__version__ = "0.1.0"
