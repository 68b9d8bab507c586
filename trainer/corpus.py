"""Where text comes from: the built-in offline corpus, local files, or the Hugging Face hub.

Each source yields documents (strings) and a fingerprint that changes when the text does,
so tokenizers and tokenized corpora can be cached by it.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import itertools
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from trainer import rows
from trainer.config import DataConfig

LOCAL_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
BUILTIN_MAX_CHARS = 6_000_000
SNIFF_BYTES = 1 << 16  # how much of each local file check_contents reads


def builtin_documents() -> Iterator[str]:
    """Docstrings of Python's standard library: English prose present on every machine with Python."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if any(p in ("test", "tests", "site-packages", "idlelib", "lib2to3") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 120:
                    yield doc
                    total += len(doc)
                    if total >= BUILTIN_MAX_CHARS:
                        return


def _kinds() -> str:
    return "/".join(sorted(LOCAL_FORMATS))


def _folder_files(source: str, path: str) -> list[str]:
    found = sorted(p for p in Path(path).rglob("*") if p.is_file())
    files = [str(p) for p in found if p.suffix in LOCAL_FORMATS]
    if not files:
        held = f"it holds {len(found)} other file(s), e.g. {found[0].name}" if found else "it is empty"
        raise ValueError(
            f"data.source={source!r} is a folder with no {_kinds()} file in it ({held}); "
            f"point data.source at a folder or file of text"
        )
    return files


def local_files(source: str) -> list[str]:
    """The files a local source names (a file, a glob or a folder), or a one-line error."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        files = _folder_files(source, path)
    elif any(c in path for c in "*?["):
        files = sorted(glob.glob(path))
        if not files:
            raise ValueError(f"data.source={source!r} matches no file; check the pattern, or give a {_kinds()} path")
    elif os.path.exists(path):
        files = [path]
    else:
        raise ValueError(
            f"data.source={source!r}: no such file or folder; give a .txt/.jsonl/.parquet path, 'builtin', or "
            f"a hub dataset name"
        )
    formats = {LOCAL_FORMATS.get(Path(f).suffix) for f in files}
    if None in formats or len(formats) > 1:
        raise ValueError(f"data.source={source!r}: files must all be one of {', '.join(sorted(LOCAL_FORMATS))}")
    if all(os.path.getsize(f) == 0 for f in files):
        raise ValueError(f"data.source={source!r} is empty; point data.source at a file with text in it")
    return files


def check_contents(files: list[str], text_field: str) -> None:
    """Cheap looks at each file (its first bytes, a jsonl's first rows) so that a binary or malformed file is named
    before any work; a bad row further in is named when it is read (documents())."""
    for path in files:
        fmt = LOCAL_FORMATS[Path(path).suffix]
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
        if fmt == "parquet":
            rows.check_parquet(path, text_field)
        elif b"\0" in head:  # no text or JSON file holds a NUL byte; UTF-16 and binaries do
            raise ValueError(
                f"data.source: {path} looks binary (a NUL byte at offset {head.index(0)}), not UTF-8 text; "
                f"remove it from data.source or convert it to UTF-8"
            )
        elif fmt == "json" and not rows.is_array(path):  # an array is parsed whole: left to the first read
            for where, row in itertools.islice(rows.json_rows(path), 100):
                rows.row_text(row, text_field, where)


def paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Documents separated by lines holding only whitespace; newlines and indentation inside one are kept."""
    current = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            yield "".join(current).rstrip("\n")
            current = []
    if current:
        yield "".join(current).rstrip("\n")


_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # a line end, then lines of whitespace only (re's \\s is str.isspace)


def split_paragraphs(text: str) -> list[str]:
    """paragraphs(text's lines) for a whole string at regex speed (the parallel tokenizer's hot loop).
    `text` has \\n line ends only; sentinel newlines make the first and last lines look like all others."""
    pieces = _BLANK_LINES.split(f"\n{text}\n")
    pieces[0] = pieces[0][1:]
    pieces[-1] = pieces[-1][:-1]  # the same piece as pieces[0] when there is no blank line
    return [p for p in pieces if p]


def text_file_documents(path: str, split: str) -> Iterator[str]:
    """Documents of a plain-text file: paragraphs (data.text_documents=blank_line) or the whole file (file).
    Invalid UTF-8 becomes U+FFFD; \\r\\n and \\r become \\n (Python's universal newlines)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        if split == "blank_line":
            yield from paragraphs(f)
            return
        text = f.read().strip("\n")
        if text.strip():
            yield text


def is_local(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or os.path.exists(os.path.expanduser(source))
        or Path(source).suffix in LOCAL_FORMATS
    )


def fingerprint(cfg: DataConfig) -> str:
    h = hashlib.sha256()
    if cfg.source == "builtin":
        h.update(f"builtin-v1 {sys.version_info[:2]} {BUILTIN_MAX_CHARS}".encode())
    elif is_local(cfg.source):
        for f in local_files(cfg.source):
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)} {st.st_size} {st.st_mtime_ns}".encode())
    else:
        h.update(f"hub {cfg.source} {cfg.hub_config}".encode())
    h.update(f" field={cfg.text_field} documents={cfg.text_documents} max_tokens={cfg.max_tokens}".encode())
    return h.hexdigest()[:16]


def documents(cfg: DataConfig) -> Iterator[str]:
    """builtin: one docstring each; .txt: see text_file_documents; jsonl / json / parquet / hub: one row each.
    A row whose data.text_field is missing or not text stops with its file and line (or hub row) named."""
    if cfg.source == "builtin":
        yield from builtin_documents()
        return
    if not is_local(cfg.source):
        yield from _texts(_hub_rows(cfg), cfg.text_field)
        return
    files = local_files(cfg.source)
    fmt = LOCAL_FORMATS[Path(files[0]).suffix]
    for path in files:
        if fmt == "text":
            yield from text_file_documents(path, cfg.text_documents)
        elif fmt == "json":
            yield from _texts(rows.json_rows(path), cfg.text_field)
        else:
            yield from _texts(rows.parquet_rows(path, cfg.text_field), cfg.text_field)


def _hub_rows(cfg: DataConfig) -> Iterator[tuple[str, object]]:
    import datasets

    ds = datasets.load_dataset(cfg.source, cfg.hub_config, split="train", streaming=cfg.streaming)
    for number, row in enumerate(ds, 1):
        yield f"{cfg.source} row {number}", row


def _texts(located_rows: Iterable[tuple[str, object]], field: str) -> Iterator[str]:
    for where, row in located_rows:
        text = rows.row_text(row, field, where)
        if text and text.strip():
            yield text


def check_hub(cfg: DataConfig) -> None:
    """A hub name that cannot be resolved (typo, private, or no network) fails here, in seconds."""
    import datasets

    try:
        datasets.load_dataset_builder(cfg.source, cfg.hub_config)
    except Exception as e:  # noqa: BLE001  (datasets raises many kinds; all mean "cannot use this source")
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(
            f"data.source={cfg.source!r} is neither a local file nor a loadable Hugging Face dataset ({reason}); "
            f"give a .txt/.jsonl/.parquet path, 'builtin', or a hub name reachable from this machine"
        ) from None


def check_source(cfg: DataConfig) -> None:
    """Fail fast, before any expensive work, on a source that cannot work."""
    if cfg.source != "builtin" and is_local(cfg.source):
        check_contents(local_files(cfg.source), cfg.text_field)
    elif cfg.source != "builtin":
        check_hub(cfg)
    if cfg.tokenizer and not os.path.isfile(os.path.expanduser(cfg.tokenizer)):
        raise ValueError(
            f"data.tokenizer={cfg.tokenizer!r} does not exist; give a sentencepiece .model file or leave it "
            f"null to train one"
        )
