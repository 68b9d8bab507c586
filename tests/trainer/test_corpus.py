"""What a local data.source names, and the cheap look at each file before any work: each problem in one line."""

import pytest

from trainer import corpus
from trainer.config import DataConfig


def check(source, **kw):
    corpus.check_source(DataConfig(source=str(source), **kw))


def test_a_folder_without_text_files_says_so(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.csv").write_text("a,b\n")
    with pytest.raises(
        ValueError,
        match=r"data.source=.*data' is a folder with no .*\.jsonl.*\.txt file in it "
        r"\(it holds 1 other file\(s\), e.g. table.csv\)",
    ):
        check(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is a folder with no .* file in it \(it is empty\)"):
        check(tmp_path / "empty")


def test_missing_path_and_unmatched_glob(tmp_path):
    with pytest.raises(ValueError, match=r"data.source=.*nope.txt'?: no such file or folder"):
        check(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"data.source=.*\*.txt' matches no file"):
        check(tmp_path / "*.txt")


def test_a_folder_reads_its_text_files_below(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "b.txt").write_text("second\n")
    (tmp_path / "d" / "a.txt").write_text("first\n")
    (tmp_path / "d" / "notes.csv").write_text("ignored\n")
    assert list(corpus.documents(DataConfig(source=str(tmp_path / "d")))) == ["first", "second"]


@pytest.mark.parametrize(
    "name, content",
    [
        ("bin.txt", bytes(range(256))),
        ("utf16.txt", "text in UTF-16".encode("utf-16")),
        ("bin.jsonl", b'{"text": "a"}\n\x00\x01\x02'),
    ],
)
def test_binary_files_are_named(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=rf"data.source: .*{name} looks binary \(a NUL byte at offset \d+\)"):
        check(tmp_path / name)


def test_bad_first_rows_fail_before_any_work(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n')
    (tmp_path / "b.jsonl").write_text('{"title": "no text key"}\n')
    with pytest.raises(ValueError, match=r"data.text_field='text' is not a key of .*b.jsonl line 1 \(keys: title\)"):
        check(tmp_path / "*.jsonl")
    with pytest.raises(ValueError, match=r"a.jsonl line 1"):  # with the other key, a.jsonl is the one refused
        check(tmp_path / "*.jsonl", text_field="title")


def test_good_sources_pass(tmp_path):
    (tmp_path / "a.txt").write_text("Plain UTF-8 text, naïve café.\n")
    check(tmp_path / "a.txt")
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n' * 200 + '{"text": 5}\n')  # row 201: found when read, not here
    check(tmp_path / "b.jsonl")
