"""Prefect flows composing the tasks: the shared stage logic (stages.py), one module per flow, parameters and clusters."""
