"""The pure core: values in, decisions out. No I/O, no event loop, no clock (``now`` and
randomness are passed in); tests/unit/test_layering.py fails if anything here imports them."""
