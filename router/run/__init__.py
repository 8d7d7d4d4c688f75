"""Running the router as a process: ``serve`` (one process or N workers), the event loop,
and ``demo`` (simulated pools on loopback with the router in front)."""
