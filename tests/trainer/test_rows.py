"""Local JSON / parquet rows: the same texts as Hugging Face `datasets` reads (the reference), and every bad file,
line or row named in one line."""

import json

import pytest

from trainer import corpus, rows
from trainer.config import DataConfig

TEXTS = ["plain", "unicode: naïve café ✓", "  indented\n\tand tabbed\n", "", 'quotes " and \\ backslashes']


def reference_texts(path, fmt: str) -> list:
    import datasets

    return list(datasets.load_dataset(fmt, data_files=[str(path)], split="train")["text"])


def ours(path, fmt: str) -> list:
    located = rows.json_rows(str(path)) if fmt == "json" else rows.parquet_rows(str(path), "text")
    return [rows.row_text(row, "text", where) for where, row in located]


def test_jsonl_rows_equal_datasets(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": t, "n": i}) for i, t in enumerate(TEXTS)]
    path.write_text(
        "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n"
    )  # a blank line is skipped, as datasets does
    assert ours(path, "json") == reference_texts(path, "json") == TEXTS


def test_json_array_rows_equal_datasets(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("  \n" + json.dumps([{"text": t} for t in TEXTS], indent=1))
    assert ours(path, "json") == reference_texts(path, "json") == TEXTS


def test_parquet_rows_equal_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": TEXTS * 3000, "n": list(range(len(TEXTS) * 3000))}), path, row_group_size=7000)
    assert ours(path, "parquet") == reference_texts(path, "parquet")


def test_null_text_is_skipped_not_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": null}\n{"text": "kept"}\n')
    cfg = DataConfig(source=str(path))
    assert list(corpus.documents(cfg)) == ["kept"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "a"}\n{"text": 5}\n', r"data.text_field='text' of .*c.jsonl line 2 holds 5 \(type int\), not text"),
        ('{"text": "a"}\n\n{"text": \n', r"data.source: .*c.jsonl line 3 is not valid JSON"),
        ('{"text": "a"}\n[1, 2]\n', r"data.source: .*c.jsonl line 2 holds \[1, 2\] \(type list\), not an object"),
        ('{"body": "a"}\n', r"data.text_field='text' is not a key of .*c.jsonl line 1 \(keys: body\)"),
        (b'{"text": "\xff\xfe"}\n', r"data.source: .*c.jsonl line 1 is not valid JSON \('utf-8' codec"),
    ],
)
def test_bad_jsonl_rows_are_named(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        list(corpus.documents(DataConfig(source=str(path))))


def test_bad_json_array_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"text": "a"}, {"text": 7}]')
    with pytest.raises(ValueError, match=r"c.json item 2 holds 7"):
        list(corpus.documents(DataConfig(source=str(path))))
    path.write_text('[{"text": "a"},')
    with pytest.raises(ValueError, match=r"data.source: .*c.json is not valid JSON"):
        list(corpus.documents(DataConfig(source=str(path))))


def test_bad_parquet_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"data.source: .*c.parquet is not a readable parquet file"):
        list(corpus.documents(DataConfig(source=str(path))))
    pq.write_table(pa.table({"text": ["a", None, "b"], "n": [1, 2, 3]}), path)
    assert list(corpus.documents(DataConfig(source=str(path)))) == ["a", "b"]
    with pytest.raises(ValueError, match=r"data.text_field='n' of .*c.parquet row 1 holds 1 \(type int\)"):
        list(corpus.documents(DataConfig(source=str(path), text_field="n")))
    with pytest.raises(ValueError, match=r"data.text_field='body' is not a column of .*c.parquet \(columns: text, n\)"):
        list(corpus.documents(DataConfig(source=str(path), text_field="body")))


def test_long_values_are_shortened(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": list(range(1000))}) + "\n")
    with pytest.raises(ValueError) as err:
        list(corpus.documents(DataConfig(source=str(path))))
    assert len(str(err.value)) < 300 and "..." in str(err.value)
