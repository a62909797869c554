"""The data files shipped in data/ are the ones data/SOURCES.md describes: same bytes (sha256),
same row counts, nothing unlisted; and nothing in the project reads data from outside the clone."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sedsft import config as C
from workflow_helpers import REPO

DATA = REPO / "data"


def sources_table() -> dict[str, dict]:
    """data/SOURCES.md's table: file (relative to data/) -> its columns."""
    lines = [line for line in (DATA / "SOURCES.md").read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["File"].strip("`")] = cells
    return rows


def row_count(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


TABLE = sources_table()


def test_the_table_lists_every_shipped_file_and_nothing_else():
    shipped = {str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    assert shipped == set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_a_shipped_file_has_the_listed_sha256_and_row_count(name):
    entry, path = TABLE[name], DATA / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert row_count(path) == int(entry["Rows"])
    assert re.fullmatch(r"[0-9a-f]{40}", entry["Commit"]) and "/" in entry["Source repo"] and entry["Licence"]


def test_every_default_data_path_is_a_shipped_file():
    """What config.yaml reads by default is inside the repository (relative to the config)."""
    raw = C.load_config(REPO / "config.yaml")
    read = set()
    for name in raw["experiments"]:
        settings = C.experiment_settings(raw, name, REPO)
        read |= {settings["data"][s]["source"] for s in ("sft", "rl")}
        if settings["benchmarks_dir"] != "hub":
            read |= {f"{settings['benchmarks_dir']}/{b}/test.jsonl" for b in settings["eval"]["benchmarks"]}
    local = {Path(p) for p in read if p and Path(p).is_absolute()}
    assert local and {str(p.relative_to(DATA)) for p in local} <= set(TABLE)


def test_nothing_in_the_project_names_a_folder_beside_the_clone():
    sibling = "../" + "shared"  # spelt apart, so that this file does not match itself
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    hits = [name for name in tracked.decode().split("\0")
            if name and (REPO / name).is_file() and sibling.encode() in (REPO / name).read_bytes()]
    assert hits == []
