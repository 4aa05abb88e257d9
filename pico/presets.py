"""Named run presets (``presets/*.yaml``): the training log's v1 and v2 runs, scaled to the
embedded default and at full scale. ``pico preset NAME`` runs one as a named DVC experiment:

    pico preset v1            # = dvc exp run -n v1 -S optim.lr=0.0003 -S ...
    pico preset v2 --queue    # queue it (then: dvc queue start)
    pico preset v2 --dry-run  # print the command only

The overrides are validated against params.yaml first, so a bad preset fails before DVC starts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from pico.config import Params, flatten, with_overrides
from pico.errors import ConfigError
from pico.paramsfile import read_params_file

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"


def presets_dir() -> Path:
    """The repository's presets/ (the working directory's, else the one beside this package)."""
    return Path("presets") if Path("presets").is_dir() else PRESETS_DIR


def available(directory: Path | None = None) -> list[str]:
    directory = directory or presets_dir()
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load(name: str, directory: Path | None = None) -> dict[str, Any]:
    directory = directory or presets_dir()
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}; available: {', '.join(available(directory))}")
    preset = read_params_file(path)
    if not isinstance(preset, dict) or not isinstance(preset.get("overrides"), dict):
        raise ConfigError(f"{path}: expected 'description' and an 'overrides' mapping")
    return preset


def hydra_value(value: Any) -> str:
    """A value in the override syntax `dvc exp run -S` accepts (Hydra's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return json.dumps(str(value)).replace('"', "'")  # quoted: commas and spaces stay one value


def command(
    name: str,
    params_path: Path = Path("params.yaml"),
    queue: bool = False,
    exp_name: str | None = None,
    directory: Path | None = None,
) -> list[str]:
    preset = load(name, directory)
    with_overrides(read_params_file(params_path), preset["overrides"], f"preset {name}")
    cmd = ["dvc", "exp", "run", "-n", exp_name or name]
    if queue:
        cmd.append("--queue")
    for key, value in preset["overrides"].items():
        cmd += ["-S", f"{key}={hydra_value(value)}"]
    return cmd


def run(name: str, params_path: Path, queue: bool, dry_run: bool, exp_name: str | None) -> int:
    cmd = command(name, params_path, queue, exp_name)
    print(load(name)["description"])
    print(" ".join(cmd if not any(" " in c for c in cmd) else [f'"{c}"' if " " in c else c for c in cmd]))
    if dry_run:
        return 0
    return subprocess.run(cmd).returncode


def overrides_between(base: Params, target: Params) -> dict[str, Any]:
    """The ``-S`` overrides that turn ``base`` (the workspace's params.yaml) into ``target``."""
    a, b = flatten(base.model_dump(mode="json")), flatten(target.model_dump(mode="json"))
    return {k: v for k, v in b.items() if a.get(k) != v}


def set_args(overrides: dict[str, Any]) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("-S", f"{key}={hydra_value(value)}")]


def quoted(cmd: list[str]) -> str:
    return " ".join(f'"{c}"' if " " in c else c for c in cmd)
