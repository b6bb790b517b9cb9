"""dart: inference-time, context-dependent pruning of LLM feed-forward neurons (DART and its baselines).

Imports are lazy on purpose: `python -m dart.run --help` and table regeneration must not pay for torch,
transformers or Lightning.
"""

__version__ = "0.1.0"
