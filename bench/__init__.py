"""sparsebench: a benchmark harness for sparse-training methods."""

__version__ = "0.1.0"
