"""Preflight: everything a run needs but uses only hours later, checked at its start, all at once.

A run that stops for a missing base model and, once that is fixed, for the missing LPIPS VGG file
costs two round trips; one error lists every missing thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from viewneti_core.errors import ModelNotFoundError, PreflightError


def check_requirements(models: Sequence[tuple[str, str | None]], lpips_weights: str) -> dict:
    """`models`: (name or path, revision) pairs; `lpips_weights`: the evaluation's LPIPS backbone.

    Returns where each was found; raises PreflightError naming every missing one.
    """
    from viewneti_core.base_model.sd_models import check_model_available
    from viewneti_core.evaluation.metrics import MissingWeightsError, check_lpips_weights

    found: dict = {"models": [], "lpips": None}
    problems: list[str] = []
    for name, revision in dict.fromkeys((str(n), r) for n, r in models):
        try:
            found["models"].append(check_model_available(name, revision))
        except ModelNotFoundError as exc:
            problems.append(str(exc))
    try:
        found["lpips"] = check_lpips_weights(lpips_weights)
    except MissingWeightsError as exc:
        problems.append(str(exc))
    if problems:
        raise PreflightError(problems)
    return found
