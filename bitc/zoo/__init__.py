"""Reference models for tests, benchmarks and examples: torch CNNs with seeded random weights, and real models
that ship inside pip packages (no downloads). Needs the `torch` / `test` extras."""
