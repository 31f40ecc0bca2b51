"""Shared pytest configuration. Expensive fixtures are session-scoped and live in tests/fixtures/."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures.models", "fixtures.data", "fixtures.runs"]
