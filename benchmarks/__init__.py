"""Benchmarks for lightning_sas: the batched SaS against a naive per-image version, audit overhead."""
