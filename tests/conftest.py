"""Shared pytest setup: quiet TensorFlow's C++ logging before it is imported."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
