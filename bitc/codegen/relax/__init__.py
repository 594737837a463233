"""Relax-level steps both targets use: the shared lowering, legalizations (NaN semantics, cached), index checks,
constant folding of call_tirs, float16 accumulation, and the call-rewriting helper they are built on."""
