"""User-facing error types, importable without loading torch (the CLI catches these)."""


class PromptError(ValueError):
    """A prompt that does not fit the placeholders or cameras it is used with."""


class ModelNotFoundError(FileNotFoundError):
    """The Stable Diffusion model could not be found or loaded."""
