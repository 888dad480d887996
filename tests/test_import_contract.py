"""ARCHITECTURE.md's may-import tables are the import contract, and every module keeps it.

The tables are parsed, not restated here, so the document cannot drift from the code:

- every Python module of the project packages has a row (the most specific path wins: a file row
  over its directory's row), and every row names files that exist;
- a module imports project modules only as its row's "may import" cell allows: ``tasks.rir_engine``
  (that module or package and what is below it), ``tasks.ambisonics/doa/errors`` (several under
  one package), ``tasks.*`` (anything in the package); a directory row's modules may also import
  each other;
- of third-party libraries, only the heavy ones that decide where a module can run (CONTROLLED)
  are checked: a module imports one only if its row names it. Prefect stays in flows/.

Imports are read with ``ast`` from the source (function-level imports included), never executed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "tasks", "flows", "training", "spatial_audiocaps", "room_specs", "benchmarks")
CONTROLLED = frozenset({
    "prefect", "prefect_dask", "dask", "torch", "transformers", "vllm", "httpx", "boto3", "botocore",
    "s3fs", "fsspec", "aiohttp", "pyroomacoustics", "webdataset", "matplotlib", "umap",
})


@dataclass(frozen=True)
class Row:
    paths: tuple[str, ...]  # "tasks/rir_bank.py" or "tasks/sources/" (a directory row)
    allowed: tuple[str, ...]  # project module patterns
    libraries: frozenset[str]
    line: int


def parse_rows(text: str) -> list[Row]:
    """Rows of every ``| module | owns | may import |`` table in ARCHITECTURE.md."""
    rows: list[Row] = []
    in_table = False
    for n, line in enumerate(text.splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:1] == ["module"] and cells[-1:] == ["may import"]:
            in_table = True
            continue
        if not cells:
            in_table = False
            continue
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        if not names:
            continue
        first = names[0]
        paths = [first]
        for extra in names[1:]:
            extra = extra if "/" in extra or extra.endswith(".py") else extra + ".py"
            paths.append(extra if "/" in extra else first.rsplit("/", 1)[0] + "/" + extra)
        allowed: list[str] = []
        libs: set[str] = set()
        for entry in re.sub(r"\([^)]*\)", "", cells[-1]).replace("`", "").split(","):
            token = entry.strip().split(" ")[0]
            if not token or token in {"—", "-"}:
                continue
            head = token.split(".")[0].split("/")[0]
            if head in PACKAGES:
                pkg, _, rest = token.partition(".")
                if "/" in rest:
                    parent, _, leaf = rest.rpartition(".")
                    first_leaf, *others = leaf.split("/")
                    base = f"{pkg}.{parent}." if parent else f"{pkg}."
                    allowed += [base + first_leaf] + [base + o for o in others]
                else:
                    allowed.append(token)
            else:
                libs.add(token)
        rows.append(Row(tuple(paths), tuple(allowed), frozenset(libs), n))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """Absolute names of what a file imports (``from pkg import mod`` resolves to ``pkg.mod``)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base)
    found.discard(me)
    return {f for f in found if f != "__future__"}


def _permits(pattern: str, name: str) -> bool:
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1]) or name == pattern[:-2]
    return name == pattern or name.startswith(pattern + ".")


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def row_of(path: Path, rows: list[Row]) -> tuple[Row, str] | None:
    """The most specific row covering a file, with the covering path."""
    rel = path.relative_to(ROOT).as_posix()
    best: tuple[Row, str] | None = None
    for row in rows:
        for p in row.paths:
            hit = rel == p if p.endswith(".py") else rel.startswith(p)
            if hit and (best is None or len(p) > len(best[1])):
                best = (row, p)
    return best


ROWS = parse_rows((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))


def test_the_tables_parse_and_name_real_files():
    assert len(ROWS) > 40
    missing = [(r.line, p) for r in ROWS for p in r.paths
               if p.endswith(".py") and not (ROOT / p).exists()]
    assert not missing, f"ARCHITECTURE.md rows name files that do not exist: {missing}"


@pytest.mark.parametrize("path", project_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_keeps_its_row(path: Path):
    rel = path.relative_to(ROOT).as_posix()
    found = row_of(path, ROWS)
    if found is None:
        assert path.name == "__init__.py" and not any(
            i.split(".")[0] in PACKAGES for i in imports_of(path)
        ), f"{rel} has no row in ARCHITECTURE.md"
        return
    row, covering = found
    own = [covering.rstrip("/").replace("/", ".")] if covering.endswith("/") else []
    bad = sorted(
        i for i in imports_of(path)
        if i.split(".")[0] in PACKAGES and not any(_permits(p, i) for p in (*row.allowed, *own))
    )
    assert not bad, f"{rel} imports {bad}, which its row (ARCHITECTURE.md line {row.line}) does not allow"
    libs = sorted({i.split(".")[0] for i in imports_of(path)} & CONTROLLED - row.libraries)
    assert not libs, f"{rel} imports {libs}; its row (ARCHITECTURE.md line {row.line}) does not name them"


def test_prefect_stays_in_flows():
    outside = [p.relative_to(ROOT).as_posix() for p in project_files()
               if not p.relative_to(ROOT).as_posix().startswith(("flows/", "benchmarks/"))
               and any(i.split(".")[0] in {"prefect", "prefect_dask"} for i in imports_of(p))]
    assert not outside, f"Prefect imported outside flows/: {outside}"


def test_the_checker_catches_a_forbidden_import(tmp_path):
    """The contract can fail: a schema row that allows pydantic only rejects a tasks import."""
    rows = parse_rows("| module | owns | may import |\n|---|---|---|\n"
                      "| `schemas/rooms.py` | x | pydantic |\n| `tasks/` | y | schemas.*, numpy, torch |\n")
    rooms = rows[0]
    assert rooms.allowed == () and not any(_permits(p, "tasks.errors") for p in rooms.allowed)
    assert rows[1].allowed == ("schemas.*",) and rows[1].libraries == {"numpy", "torch"}
    fan = parse_rows("| module | owns | may import |\n|---|---|---|\n"
                     "| `tasks/doa.py`, `errors.py` | z | tasks.ambisonics/errors, schemas.doa |\n")[0]
    assert fan.paths == ("tasks/doa.py", "tasks/errors.py")
    assert fan.allowed == ("tasks.ambisonics", "tasks.errors", "schemas.doa")
