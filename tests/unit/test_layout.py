"""The import rule of docs/architecture.md, checked on the source: every package imports only
the layers it may depend on, so a change in a higher layer never reaches a lower one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("falcon_lake", "ingestor", "publisher", "emulators", "schemas", "bench", "scripts", "tests")

# package -> the packages of ours it may import (besides itself). `falcon_lake.ops` is the
# operator commands; plain `falcon_lake` is the kernel both processes share.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "falcon_lake": {"schemas"},
    "ingestor": {"falcon_lake"},
    "publisher": {"falcon_lake", "schemas"},
    "falcon_lake.ops": {"falcon_lake", "publisher", "schemas"},
    "emulators": set(),  # stand-ins for Falcon and AWS: they share no code with the client they test
}
# The command-line dispatcher names every subcommand's module as a string and imports it when
# that command runs; it is the one kernel module above everything.
DISPATCHER = ROOT / "falcon_lake" / "cli.py"


def _package_of(module: str) -> str | None:
    if module == "falcon_lake.ops" or module.startswith("falcon_lake.ops."):
        return "falcon_lake.ops"
    top = module.split(".", 1)[0]
    return top if top in OURS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "falcon_lake":  # `from falcon_lake import ops` names a package
                found.extend((node.lineno, f"falcon_lake.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, node.module))
    return found


def _sources(package: str) -> list[Path]:
    folder = ROOT / Path(*package.split("."))
    files = sorted(folder.rglob("*.py"))
    if package == "falcon_lake":
        files = [f for f in files if (ROOT / "falcon_lake" / "ops") not in f.parents and f != DISPATCHER]
    return files


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    files = _sources(package)
    assert files, f"no sources found for {package}"
    broken = []
    for path in files:
        for line, module in _imports(path):
            target = _package_of(module)
            if target is None or target == package:
                continue
            if target not in ALLOWED[package]:
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not broken, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}:\n" + "\n".join(
        broken
    )


def test_the_rule_sees_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("import json\n\ndef f():\n    from publisher.filter import EventFilter\n")
    assert _imports(source) == [(1, "json"), (4, "publisher.filter")]
    assert _package_of("falcon_lake.ops.audit") == "falcon_lake.ops"
    assert _package_of("falcon_lake.settings") == "falcon_lake"


def test_no_source_file_grows_past_the_size_a_reader_holds_in_mind() -> None:
    """Files in the product packages stay at about 500 lines or fewer (docs/architecture.md)."""
    limit = 510
    long = []
    for package in ("falcon_lake", "ingestor", "publisher", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > limit:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, "split these by idea:\n" + "\n".join(long)
