"""Prefect tasks wrapping viewneti_core: the task runtime (runtime.py), fault drills, one module per stage."""
