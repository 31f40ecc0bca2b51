"""Training: the trainer, its batches, checkpoints, validation grids, the view-mapper registry and the import of the original's checkpoints.

`from viewneti_core.training import train` keeps working (the trainer lives in `trainer`); it is
resolved on first use so that importing a light submodule (checkpoints) does not load the trainer.
"""


def __getattr__(name: str):
    if name in ("train", "TrainResult"):
        from viewneti_core.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
