"""The DART engine: tracing statistics, scoring, layer allocation, drift detection and mask execution,
attached to a Hugging Face causal LM through architecture adapters."""
