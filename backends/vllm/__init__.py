"""Real vLLM: a tiny random-weight model for CPU tests and the server launcher."""
