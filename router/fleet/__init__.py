"""What the router knows of its backends: the fleet as configured (topology), their live
accounting (ledger: load, health, learned prefill rates) and what probes read off them."""
