"""What pyproject.toml declares is what CI checks: pins, floors and the package list."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)\s*(==|>=)\s*([0-9][0-9A-Za-z.]*)$")


def _parsed(requirements: list[str]) -> dict[str, tuple[str, str]]:
    found = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        assert match, f"{requirement!r}: write a plain 'name==version' or 'name>=version'"
        found[match[1].lower().replace("_", "-")] = (match[2], match[3])
    return found


def test_test_and_benchmark_tools_are_pinned_exactly():
    for extra, requirements in PROJECT["project"]["optional-dependencies"].items():
        for name, (operator, _) in _parsed(requirements).items():
            assert operator == "==", f"extra {extra!r}: pin {name} with == (a fresh machine gets the newest)"


def test_floors_file_holds_each_runtime_floor():
    floors = {}
    for line in (ROOT / "tests" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            floors[name.strip().lower().replace("_", "-")] = version.strip()
    declared = _parsed(PROJECT["project"]["dependencies"])
    assert set(floors) == set(declared)
    for name, (operator, version) in declared.items():
        assert operator == ">=", f"{name}: runtime dependencies are floors"
        assert tuple(map(int, floors[name].split("."))) == tuple(map(int, version.split("."))) + (0,) * (
            len(floors[name].split(".")) - len(version.split("."))), name


def test_every_package_folder_is_installed():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    for init in (ROOT / "eqcompile").rglob("__init__.py"):
        package = ".".join(init.parent.relative_to(ROOT).parts)
        assert package in listed, f"{package} is missing from [tool.setuptools] packages"
