"""The experiment layer: datasets, models, strategies and the one training loop.

Gin lives here and in ``scripts/``, never in the core library (``rigl/*.py``).
"""
