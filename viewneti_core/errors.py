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


class ArtifactError(ValueError):
    """A config or a file of ours (mapper, checkpoint, training state, predictions, metrics, cameras)
    that cannot be used: one line naming the file and what is wrong with it."""


class RunInUseError(RuntimeError):
    """Another process holds the lock of a run directory (the message names the holder's host and PID)."""


_OS_HINTS = {  # errno name -> what to do about it
    "ENOSPC": "the disk is full: free space there or write somewhere else",
    "EDQUOT": "the disk quota is used up: free space there or write somewhere else",
    "EFBIG": "the file is larger than this system allows: a file-size limit (ulimit -f) or the filesystem's",
    "ENAMETOOLONG": "a file or directory name may have at most 255 bytes: use a shorter name",
    "EACCES": "no permission: choose a directory you can write to",
    "EPERM": "no permission: choose a directory you can write to",
    "EROFS": "the filesystem is read-only: write somewhere else",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path, the system's reason and, for the usual ones, what to do."""
    import errno

    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}: "
    hint = _OS_HINTS.get(errno.errorcode.get(exc.errno or -1, ""))
    return f"{where}{reason}" + (f" ({hint})" if hint else "")
