"""A vLLM-compatible simulator: same routes, JSON, SSE framing and metrics as vLLM 0.32,
over an explicit, seeded engine model (KV blocks, continuous batching, chunked prefill,
preemption, prefix caching) with injectable faults."""

from ctxroute.backends.simulator.faults import Faults
from ctxroute.backends.simulator.profiles import PROFILES, Profile
from ctxroute.backends.simulator.server import SimConfig, Simulator

__all__ = ["PROFILES", "Faults", "Profile", "SimConfig", "Simulator"]
