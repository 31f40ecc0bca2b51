"""Reading configs and our artifacts within limits, with one-line errors that name the file.

Every YAML or JSON file the project reads (configs, the view-mapper registry, checkpoint and mapper
metadata, training state, predictions, cameras.json) goes through here, so the limits hold
everywhere:
- a size bound, enforced while reading (a FIFO or /dev/zero cannot stream forever);
- a nesting bound, checked while parsing, before Python's recursion limit becomes a traceback;
- for YAML, a bound on the document with every alias expanded: a 1 KB "billion laughs" file is small
  as parsed (aliases share one object) but expands to gigabytes as soon as it is walked as a tree,
  which validation, merging and error messages all do.
Safetensors files are opened here too, so a truncated or garbage file is named instead of surfacing
as a Rust `SafetensorError`. `short_repr` keeps a bad value quoted in an error message short.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import yaml

from viewneti_core.errors import ArtifactError

MAX_CONFIG_BYTES = 1 << 20  # YAML configs: training, benchmark, the view-mapper registry
MAX_JSON_BYTES = 16 << 20  # JSON artifacts and cameras.json (a 10,000-image capture is about 5 MB)
MAX_DEPTH = 64  # nesting levels of any YAML/JSON document (our deepest config nests 5)
MAX_YAML_NODES = 100_000  # nodes of a YAML document with every alias expanded
SHORT_VALUE = 80  # characters of a bad value quoted in an error message


def _size(limit: int) -> str:
    return f"{limit // (1 << 20)} MiB" if limit >= 1 << 20 else f"{limit // 1024} KiB"


def read_bytes_limited(path: Path | str, limit: int, what: str) -> bytes:
    """The bytes of `path`, refused (naming it) when there are more than `limit`."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path}: {what} is larger than {_size(limit)}; refusing to read it "
                            "(is it the right file?)")
    return data


def read_text_limited(path: Path | str, limit: int, what: str) -> str:
    data = read_bytes_limited(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: {what} is not UTF-8 text (bad byte at offset {exc.start})") from None


def short_repr(value: Any, limit: int = SHORT_VALUE) -> str:
    """repr of `value` cut to about `limit` characters; never walks more of it than it shows."""
    shown = _REPR.repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHORT_VALUE


# ---- YAML --------------------------------------------------------------------------------------


class YAMLLimitError(yaml.YAMLError):
    """A YAML document beyond the nesting or alias-expansion bound."""


class _Bounded:
    """Mixin for PyYAML loaders: bounded nesting while composing, bounded expansion once composed."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_YAML_NODES
    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(f"it nests deeper than {self.max_depth} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node, self.max_nodes, self.max_depth)
        return node


def _check_expansion(root: yaml.Node, max_nodes: int, max_depth: int) -> None:
    """Size and depth of the document with aliases expanded, computed once per shared node.

    Anchors precede their aliases in the stream, so this walk meets every shared node first where it
    is defined: its recursion is bounded by the composed (already bounded) nesting.
    """
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def measure(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YAMLLimitError(f"an alias refers to a node that contains it (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        count, depth = 1, 1
        for child in children:
            child_count, child_depth = measure(child)
            count, depth = count + child_count, max(depth, child_depth + 1)
            if count > max_nodes:
                raise YAMLLimitError(f"its aliases expand to more than {max_nodes:,} values (an alias bomb?)")
            if depth > max_depth:
                raise YAMLLimitError(f"with its aliases expanded it nests deeper than {max_depth} levels")
        open_nodes.discard(key)
        sizes[key] = (count, depth)
        return sizes[key]

    measure(root)


class BoundedSafeLoader(_Bounded, yaml.SafeLoader):
    """`yaml.SafeLoader` within MAX_DEPTH and MAX_YAML_NODES."""


class BoundedBaseLoader(_Bounded, yaml.BaseLoader):
    """`yaml.BaseLoader` (every scalar a string) within the same bounds."""


def load_yaml_text(text: str, loader: type = BoundedSafeLoader) -> Any:
    """Parse YAML within the bounds; a RecursionError (deep flow collections) is a YAMLLimitError too."""
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - bounded Safe/Base loaders only
    except RecursionError:
        raise YAMLLimitError(f"it nests too deeply (more than {MAX_DEPTH} levels)") from None


def read_yaml_file(path: Path | str, what: str = "config file", limit: int = MAX_CONFIG_BYTES) -> Any:
    """A YAML file within the size, nesting and expansion bounds, or an ArtifactError naming it."""
    text = read_text_limited(path, limit, what)
    try:
        return load_yaml_text(text)
    except YAMLLimitError as exc:
        raise ArtifactError(f"{path}: {what} refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ArtifactError(f"{path}: {what} is not valid YAML ({_first_line(exc)})") from None


# ---- JSON --------------------------------------------------------------------------------------


def _depth_of(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in item)
    return deepest


def load_json_text(text: str, where: str, what: str = "JSON file") -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise ArtifactError(f"{where}: {what} refused: it nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and int() beyond Python's digit limit
        raise ArtifactError(f"{where}: {what} is not valid JSON ({_first_line(exc)})") from None
    if _depth_of(value) > MAX_DEPTH:
        raise ArtifactError(f"{where}: {what} refused: it nests deeper than {MAX_DEPTH} levels")
    return value


def read_json_file(path: Path | str, what: str = "JSON file", limit: int = MAX_JSON_BYTES,
                   expect: type | None = dict) -> Any:
    """A JSON file within the size and nesting bounds (of type `expect`), or an ArtifactError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} is missing")
    value = load_json_text(read_text_limited(path, limit, what), str(path), what)
    if expect is not None and not isinstance(value, expect):
        raise ArtifactError(f"{path}: {what} must hold a JSON {_json_type(expect)}, got {_json_type(type(value))}")
    return value


def _json_type(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number",
            bool: "boolean", type(None): "null"}.get(kind, kind.__name__)


def require(data: dict, key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    """data[key], checked to be of `kinds` (bool is not an int here), else an ArtifactError naming `where`."""
    if key not in data:
        raise ArtifactError(f"{where}: key {key!r} is missing")
    value = data[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(_json_type(k) for k in kinds)
        raise ArtifactError(f"{where}: key {key!r} must be a {expected}, got {short_repr(value, 40)}")
    return value


# ---- safetensors -------------------------------------------------------------------------------


def read_safetensors(path: Path | str, what: str = "safetensors file") -> dict:
    """All tensors of a safetensors file on the CPU, or an ArtifactError naming a missing, truncated or
    garbage file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: {what} is damaged or not a safetensors file "
                            f"({_first_line(exc)}); it was cut short or overwritten") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = " ".join(part.strip() for part in text[:3]) if text else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."
