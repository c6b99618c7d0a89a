"""`pip install .` from a clone: the wheel holds every package of the project and asks for
every dependency pyproject.toml names."""

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from django.conf import settings
from packaging.requirements import Requirement

ROOT = Path(settings.BASE_DIR)
# Local state and build output: never part of what is built.
NOT_SOURCE = (".venv", "var", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def project_packages() -> set[str]:
    """Every importable package in the checkout, except the tests."""
    packages = set()
    for init in ROOT.rglob("__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts and parts[0] not in ("tests", ".venv", "var", "build"):
            packages.add(".".join(parts))
    return packages


def can_build_offline() -> bool:
    """Whether the installed setuptools builds wheels by itself (with the `wheel` package, or
    from setuptools 70.1 on), so the build needs no other download."""
    return any(
        importlib.util.find_spec(name) is not None
        for name in ("wheel", "setuptools.command.bdist_wheel")
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path_factory.mktemp("source") / "omniweb"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    if can_build_offline():
        command.append("--no-build-isolation")
    result = subprocess.run(
        [*command, str(source)], capture_output=True, text=True, timeout=300, cwd=out
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("omniweb-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


@pytest.mark.slow
def test_the_wheel_holds_every_package_with_its_modules(wheel):
    names = set(wheel.namelist())
    packaged = {
        str(Path(name).parent).replace("/", ".") for name in names if name.endswith("/__init__.py")
    }
    expected = project_packages()
    # The walk above found the packages that are easy to leave out.
    assert {
        "omniweb",
        "accounts.migrations",
        "accounts.management.commands",
        "generations.migrations",
        "generations.templatetags",
        "generations.providers",
        "generations.simulator",
        "generations.simulator.migrations",
        "loadtest",
    } <= expected
    assert packaged == expected
    for package in expected:
        folder = ROOT.joinpath(*package.split("."))
        modules = {f"{package.replace('.', '/')}/{path.name}" for path in folder.glob("*.py")}
        assert modules <= names, f"{package}: {sorted(modules - names)} missing"
    assert not any(name.startswith("tests/") for name in names)


@pytest.mark.slow
def test_the_wheel_asks_for_every_dependency_in_pyproject(wheel):
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    required = {r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert metadata["Name"] == "omniweb"
    assert {Requirement(r) for r in required} == {Requirement(r) for r in project["dependencies"]}
