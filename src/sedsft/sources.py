"""Reading training rows from 'tiny' files, local .jsonl/.json/.parquet files, or the HF Hub."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad training data, with a message naming the source, the field and the row."""


def load_rows(source: str, split: str, limit: int | None = None) -> list[dict]:
    """The first `limit` rows of a local file or a Hub dataset split, as plain dicts."""
    import datasets

    path = Path(source)
    suffix = "".join(path.suffixes[-1:])
    sliced = f"{split}[:{limit}]" if limit else split
    if suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DataError(f"data file not found: {source}")
        builder = "parquet" if suffix == ".parquet" else "json"
        dataset = datasets.load_dataset(builder, data_files={split: str(path)}, split=sliced)
    elif path.exists():
        dataset = datasets.load_from_disk(str(path))
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        dataset = dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    else:
        dataset = datasets.load_dataset(source, split=sliced)
    if len(dataset) == 0:
        raise DataError(f"{source} (split {split!r}) has no rows")
    return dataset.to_list()


def get_field(row: dict, dotted: str, source: str, index: int):
    """row['a']['0']['b'] for 'a.0.b'; a missing field names the source, row and path."""
    value = row
    for part in dotted.split("."):
        try:
            value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            columns = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{source}: row {index} has no field {dotted!r} (columns: {columns})") from None
    return value
