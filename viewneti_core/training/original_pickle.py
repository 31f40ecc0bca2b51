"""A restricted reader for foreign `torch.save` files: tensors and plain containers, never pickled code.

`torch.load(weights_only=True)` refuses files that pickle classes of other code bases (the original
ViewNeTI checkpoints pickle its Fourier-encoder module), and a full unpickle runs whatever globals the
file names. This unpickler resolves a fixed set of globals only: its own tensor rebuilders (reading
the zip's raw storages, always onto the CPU whatever device they were saved from), a few containers,
and the original's classes as inert records of their pickled state. Any other global is refused
before it is called, with the file and the global named.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickled value of a pre-1.6 torch.save file


class OriginalCheckpointError(ValueError):
    """A file that is not a usable checkpoint of the original code; nothing was written."""


# ---- restricted unpickling -----------------------------------------------------------------------


class OriginalRecord:
    """An inert stand-in for a class of the pickled file: keeps its pickled state, runs none of its code."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> OriginalRecord:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def attrs(self) -> dict:
        """The instance dict as pickled (a `(dict, slots)` pair is merged)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            return {**(state[0] or {}), **(state[1] or {})}
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<record of {self.global_name}>"


# The original's classes that can occur in its checkpoints (encoders, the old `encode_phi` MLP, its config
# dataclasses) and the torch.nn modules such objects hold: all become records, none is imported.
ORIGINAL_CLASSES = frozenset({
    "models.positional_encoding.FourierPositionalEncodingNDims",
    "models.positional_encoding.FourierPositionalEncoding",
    "models.positional_encoding.NeTIPositionalEncoding",
    "models.positional_encoding.BasicEncoder",
    "models.positional_encoding.PositionalEncoding",
    "models.neti_mapper.NeTIMapper",
    "models.mlp.MLP",
    "utils.types.PESigmas",
})
TORCH_MODULE_CLASSES = frozenset(
    f"torch.nn.modules.{name}"
    for name in ("linear.Linear", "linear.Identity", "normalization.LayerNorm", "activation.LeakyReLU",
                 "activation.ELU", "activation.ReLU", "container.Sequential", "container.ModuleList")
)
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_RECORD_TYPES: dict[str, type[OriginalRecord]] = {}


def _record_type(name: str) -> type[OriginalRecord]:
    if name not in _RECORD_TYPES:
        _RECORD_TYPES[name] = type(name.rsplit(".", 1)[-1], (OriginalRecord,), {"global_name": name})
    return _RECORD_TYPES[name]


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    data: torch.Tensor  # flat, of the storage's dtype


def _rebuild_tensor(storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int], *_ignored: Any) -> torch.Tensor:
    """torch's `_rebuild_tensor[_v2]`, minus requires_grad and hooks: a detached CPU copy."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor without a storage ({type(storage).__name__})")
    return storage.data.as_strided(tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: torch.Tensor, *_ignored: Any) -> torch.Tensor:
    return data


def _path_parts(*parts: str) -> str:
    return str(PurePosixPath(*parts))


ALLOWED_CALLABLES: dict[str, Callable] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "pathlib.PosixPath": _path_parts,
    "pathlib.PurePosixPath": _path_parts,
    "pathlib.Path": _path_parts,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals above; every other global is refused before it is called."""

    def __init__(self, file, source: Path, read_storage: Callable[[str, torch.dtype, int], torch.Tensor]):
        super().__init__(file)
        self.source = source
        self.read_storage = read_storage

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 files name Python 2's module
        full = f"{module}.{name}"
        if full in ALLOWED_CALLABLES:
            return ALLOWED_CALLABLES[full]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if full in ORIGINAL_CLASSES or full in TORCH_MODULE_CLASSES:
            return _record_type(full)
        raise OriginalCheckpointError(
            f"{self.source}: refusing to load: its pickle names the global {full!r}, which is neither a tensor, "
            "a plain container nor a class of the original ViewNeTI code. Nothing from the file was executed."
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise OriginalCheckpointError(f"{self.source}: unexpected persistent id {pid!r} in its pickle")
        _, storage_type, key, _location, numel = pid  # the location (e.g. 'cuda:0') is ignored: CPU always
        if not isinstance(storage_type, _StorageType):
            raise OriginalCheckpointError(f"{self.source}: storage {key!r} has an unknown type {storage_type!r}")
        return _Storage(self.read_storage(str(key), storage_type.dtype, int(numel)))


def read_torch_file(path: Path) -> Any:
    """Unpickle a zip-format `torch.save` file with the restricted unpickler; tensors land on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    with path.open("rb") as f:
        head = f.read(16)
    if not head.startswith(ZIP_MAGIC):
        if _is_legacy_torch_file(path):
            raise OriginalCheckpointError(
                f"{path} is a legacy (torch < 1.6) torch.save file; only the zip format the released checkpoints "
                "use is supported")
        raise OriginalCheckpointError(
            f"{path} is not a torch.save file (not a zip archive): expected a mapper-steps-N_view.pt or "
            "mapper-steps-N_object.pt file of the original ViewNeTI code")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise OriginalCheckpointError(f"{path} is a damaged zip archive: {exc}") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise OriginalCheckpointError(f"{path} is a zip archive but not a torch.save file (no <dir>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() not in (b"little", b""):
            raise OriginalCheckpointError(f"{path} was saved big-endian; only little-endian files are supported")

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            member = f"{prefix}data/{key}"
            itemsize = torch.empty((), dtype=dtype).element_size()
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise OriginalCheckpointError(f"{path}: storage {member} is missing") from None
            if info.file_size != numel * itemsize:
                raise OriginalCheckpointError(
                    f"{path}: storage {member} holds {info.file_size} bytes, its tensor needs {numel * itemsize}")
            raw = bytearray(archive.read(member))
            return torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)

        with archive.open(pickles[0]) as f:
            try:
                return RestrictedUnpickler(f, path, read_storage).load()
            except OriginalCheckpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - any malformed pickle is a bad file, said plainly
                raise OriginalCheckpointError(f"{path}: its pickle could not be read ({type(exc).__name__}: {exc})") from None


def _is_legacy_torch_file(path: Path) -> bool:
    class _Magic(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError("no globals here")

    try:
        with path.open("rb") as f:
            return _Magic(f).load() == LEGACY_MAGIC
    except Exception:  # noqa: BLE001 - anything that is not the magic number is not a legacy file
        return False
