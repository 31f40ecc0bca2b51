"""Hostile or huge config files (issue 21, section 2): refused quickly, in one short message naming
the file, with the same limits for the benchmark configs, cameras.json, predictions.json and the
view-mapper registry. The CLI checks run `viewneti` as a real process (no torch is imported before
the config is read, so each takes about a second)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from viewneti_core.config import ConfigError, load_config, parse_overrides
from viewneti_core.errors import ArtifactError
from viewneti_core.safe_io import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_JSON_BYTES

REPO = Path(__file__).resolve().parents[1]


def billion_laughs(levels: int, key: str = "eval:\n  seeds") -> str:
    """A ~1 KB YAML whose alias `a{levels}` expands to 9**levels strings, placed under a typed key."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    body = "\n".join("  " + line for line in lines)
    return f"x-anchors:\n{body}\n{key}: *a{levels}\n"


def _viewneti(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "viewneti_cli.viewneti", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _error_text(done: subprocess.CompletedProcess) -> str:
    """The error message (a config error lists one line per bad key), checked: exit 2, no traceback."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    start = done.stderr.index("viewneti: error:")
    return done.stderr[start:].split("\n(run with --debug")[0]


def test_cli_refuses_alias_bombs_deep_nesting_and_huge_files_naming_them(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs(9))
    assert len(bomb.read_bytes()) < 1500
    deep = tmp_path / "deep.yaml"
    deep.write_text("eval:\n  seeds: " + "[" * 2000 + "]" * 2000 + "\n")
    huge = tmp_path / "huge.yaml"  # an invalid list just over 1 MiB
    huge.write_text("eval:\n  seeds: [" + ",".join(["lol"] * (MAX_CONFIG_BYTES // 4 + 10)) + "]\n")
    cases = {bomb: "alias", deep: "nests deeper", huge: "larger than 1 MiB"}
    started = time.monotonic()
    procs = {path: subprocess.Popen([sys.executable, "-m", "viewneti_cli.viewneti", "config", "show", "--config",
                                     str(path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for path in cases}
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        line = _error_text(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        assert str(path) in line and cases[path] in line
        assert len(err) < 1000
    assert time.monotonic() - started < 60
    # `train` reads its config the same way, and refuses before importing torch or touching a run dir
    line = _error_text(_viewneti("train", "--config", str(bomb), "--log.exp_dir", str(tmp_path / "runs")))
    assert str(bomb) in line and not (tmp_path / "runs").exists()


def test_run_names_and_paths_fit_the_filesystem(tmp_path):
    line = _error_text(_viewneti("train", "--log.exp_name", "n" * 300, "--log.exp_dir", str(tmp_path)))
    assert "log.exp_name is 300 bytes long" in line and len(line) < 600
    assert list(tmp_path.iterdir()) == []  # no ENAMETOOLONG half-way: nothing was created
    with pytest.raises(ConfigError, match="log.exp_dir: path component"):
        load_config(None, ["--log.exp_dir", str(tmp_path / ("d" * 256) / "runs")])
    with pytest.raises(ConfigError, match="at most 100 characters"):
        load_config(None, ["--data.placeholder_object_token", "<" + "o" * 300 + ">"])
    assert load_config(None, ["--log.exp_name", "n" * 200]).log.exp_name == "n" * 200  # the bound itself is fine


def test_validation_errors_quote_a_short_prefix_of_bad_values(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(f"data:\n  placeholder_view_token: '{'v' * 600_000}'\neval:\n  seeds: [{','.join(['x'] * 5_000)}]\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(config)
    message = str(err.value)
    assert time.monotonic() - started < 20
    assert len(message) < 8000 and "data.placeholder_view_token" in message and "eval.seeds.0" in message
    assert "more" in message.splitlines()[-1]  # 5,000 bad items: the first ones, then a count


def test_override_values_have_the_same_bounds():
    """`--key value` overrides are YAML too: the same alias and nesting bounds apply."""
    items = ["&a0 [" + ",".join(["1"] * 9) + "]"]
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = "[" + ", ".join(items) + "]"  # 412 characters whose last item expands to 9**10 numbers
    started = time.monotonic()
    with pytest.raises(ConfigError, match="override --eval.seeds refused: .*alias"):
        parse_overrides(["--eval.seeds", bomb])
    with pytest.raises(ConfigError, match="override --eval.seeds refused: .*nests deeper"):
        parse_overrides(["--eval.seeds", "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)])
    assert time.monotonic() - started < 5
    assert parse_overrides(["--eval.seeds", "[1,2]"]) == {"eval": {"seeds": [1, 2]}}


def test_benchmark_configs_have_the_same_limits(tmp_path):
    from flows.params import load_benchmark_config

    bomb = tmp_path / "bench-bomb.yaml"
    bomb.write_text(billion_laughs(9, key="test_scans"))
    big = tmp_path / "bench-big.yaml"
    big.write_text("views: [" + ",".join(["1"] * (MAX_CONFIG_BYTES // 2 + 10)) + "]\n")
    deep = tmp_path / "bench-deep.yaml"
    deep.write_text("execution:\n  cluster:\n    kwargs:\n      x: " + "[" * 500 + "]" * 500 + "\n")
    for path, text in ((bomb, "alias"), (big, "larger than 1 MiB"), (deep, "nests deeper")):
        with pytest.raises(ConfigError, match=text) as err:
            load_benchmark_config(path)
        assert str(path) in str(err.value) and len(str(err.value)) < 500
    with pytest.raises(ConfigError, match="run_dir: path component"):
        load_benchmark_config(None, ["--run_dir", str(tmp_path / ("r" * 300))])


def test_registry_cameras_json_and_predictions_json_have_the_same_limits(tmp_path, monkeypatch):
    from viewneti_core.data.camera_files import CameraFileError, load_camera_folder
    from viewneti_core.inference import read_predictions
    from viewneti_core.training.view_mapper_registry import REGISTRY_ENV, read_registry

    registry = tmp_path / "view_mappers.yaml"
    registry.write_text(billion_laughs(9, key="mine"))
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    with pytest.raises(ArtifactError, match="alias"):
        read_registry()

    captures = tmp_path / "capture"
    captures.mkdir()
    (captures / "cameras.json").write_text('{"images": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(CameraFileError, match="nests deeper") as err:
        load_camera_folder(captures)
    assert str(captures / "cameras.json") in str(err.value)
    with (captures / "cameras.json").open("w") as f:  # just over the bound: refused before parsing
        f.write('{"comment": "' + "x" * MAX_JSON_BYTES + '", "images": []}')
    with pytest.raises(CameraFileError, match="larger than 16 MiB"):
        load_camera_folder(captures)

    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "predictions.json").write_text('{"images": ' + "[" * 3000 + "]" * 3000 + "}")
    (predictions / "predictions.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="nests deeper") as err:
        read_predictions(predictions)
    assert str(predictions / "predictions.json") in str(err.value)
    (predictions / "predictions.json").write_text(json.dumps({"images": [], "note": "n" * (MAX_JSON_BYTES + 1)}))
    with pytest.raises(ArtifactError, match="larger than 16 MiB"):
        read_predictions(predictions)
