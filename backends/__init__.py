"""Backends the router talks to: a vLLM-compatible simulator and real vLLM helpers."""
