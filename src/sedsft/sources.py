"""Reading training rows from 'tiny' files, local .jsonl/.json/.parquet files, or the HF Hub."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad training data, with a message naming the source, the field and the row."""


def load_rows(source: str, split: str, limit: int | None = None, skip: int = 0) -> list[dict]:
    """`limit` rows (all if None) after the first `skip` of a local file or a Hub dataset split."""
    import datasets

    path = Path(source)
    suffix = "".join(path.suffixes[-1:])
    sliced = f"{split}[{skip or ''}:{skip + limit if limit else ''}]" if limit or skip else split
    if suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DataError(f"data file not found: {source}")
        if _is_empty(path):  # datasets would fail on it deep inside its schema inference
            raise DataError(f"{source} (split {split!r}) has no rows")
        builder = "parquet" if suffix == ".parquet" else "json"
        dataset = _sliced(lambda: datasets.load_dataset(builder, data_files={split: str(path)}, split=sliced))
    elif path.exists():
        dataset = datasets.load_from_disk(str(path))
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        end = len(dataset) if limit is None else min(skip + limit, len(dataset))
        dataset = dataset.select(range(min(skip, end), end)) if limit or skip else dataset
    else:
        dataset = _sliced(lambda: datasets.load_dataset(source, split=sliced))
    if len(dataset) == 0:
        beyond = f" after skipping {skip}" if skip else ""
        raise DataError(f"{source} (split {split!r}) has no rows{beyond}")
    return dataset.to_list()


def _is_empty(path: Path) -> bool:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows == 0
    with open(path, "rb") as fh:
        return not any(line.strip() for line in fh)


def _sliced(load):
    """datasets refuses a slice past the end ('corresponds to no data'): that is an empty window."""
    import datasets

    try:
        return load()
    except ValueError as error:
        if "corresponds to no data" not in str(error):
            raise
        return datasets.Dataset.from_list([])


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
