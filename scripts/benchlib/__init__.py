"""The benchmark harness behind `scripts/bench`: load generator, service control, scenarios."""
