"""User-facing error types, importable without loading torch (the CLI catches these)."""


class PromptError(ValueError):
    """A prompt that does not fit the placeholders or cameras it is used with."""


class ModelNotFoundError(FileNotFoundError):
    """The Stable Diffusion model could not be found or loaded."""


class PreflightError(FileNotFoundError):
    """Things a run needs are missing; the message lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} things this run needs are missing:\n" + "\n".join(
                f"{i}. {p}" for i, p in enumerate(self.problems, 1))
        super().__init__(text)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # Prefect/Dask pickle exceptions between processes
        return (type(self), (self.problems,))
