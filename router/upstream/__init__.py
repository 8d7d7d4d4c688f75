"""The transport to vLLM: HTTP/1.1 connections framed by httptools (connection.py), a
keep-alive pool per backend (pool.py), and the relay of streamed answers (relay.py)."""
