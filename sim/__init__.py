"""Drivers at the edge: the Hydra app `fedsign-sim`, engines, sweeps, benchmarks, reports."""
