"""Evaluation: the DTU metrics, scoring of predictions into Parquet, and the summary tables.

`from viewneti_core.evaluation import evaluate_predictions` keeps working (scoring lives in
`scoring`), resolved on first use so that importing `metrics` alone stays light.
"""


def __getattr__(name: str):
    if name == "evaluate_predictions":
        from viewneti_core.evaluation import scoring

        return scoring.evaluate_predictions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
