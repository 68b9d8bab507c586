"""The bad-input table (issue 17): every bad input is a real `python train.py` run that exits 2 with exactly one
line on stderr, `error: ...`, naming the config key or file to change, and leaves every run directory and
checkpoint as it was (a finished run sits in run.out_dir during each case and is compared file by file).

Most cases stop before the model is built (about the time the imports take). A session fixture trains the
tokenizer and the finished run once, and another starts every selected case at once, a process per CPU core.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import FAST, free_port, train_command, train_env

BASE = [*FAST, "train.steps=2", "train.save_every=2"]


def write_inputs(root: Path) -> None:
    """The bad (and a few good) files the cases point at."""
    from trainer.corpus import builtin_documents

    (root / "corpus.txt").write_text("\n\n".join(itertools.islice(builtin_documents(), 400)))
    (root / "tiny.txt").write_text("hello you\n")  # 10 bytes: far too little text for 512 pieces
    (root / "empty.txt").write_text("")
    (root / "a_file").write_text("not a folder\n")
    (root / "notes.csv").write_text("a,b\n1,2\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (root / "binary.jsonl").write_bytes(b'{"text": "ok"}\n' + bytes(range(256)))
    (root / "number.jsonl").write_text('{"text": 5}\n{"text": "fine"}\n')
    rows = [json.dumps({"text": f"document {i} has a few words in it"}) for i in range(150)]
    (root / "late_number.jsonl").write_text("\n".join([*rows, '{"text": [1, 2]}']) + "\n")
    (root / "malformed.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (root / "list_row.jsonl").write_text('["text", "a row that is a list"]\n')
    (root / "no_key.jsonl").write_text('{"body": "text under another key"}\n')
    (root / "malformed.json").write_text('[{"text": "ok"}, {"text": ]')
    (root / "not.parquet").write_bytes(b"PAR1" + bytes(range(200)))
    (root / "garbage.model").write_bytes(b"this is no sentencepiece model")
    for name in ("no_text_folder", "empty_folder", "mixed"):
        (root / name).mkdir()
    (root / "no_text_folder" / "table.csv").write_text("a,b\n")
    (root / "mixed" / "a.txt").write_text("some text\n")
    (root / "mixed" / "b.jsonl").write_text('{"text": "more"}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2, 3]}), root / "numbers.parquet")
    pq.write_table(pa.table({"body": ["a", "b"]}), root / "body.parquet")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """Bad files, a small corpus with its trained tokenizer in a cache, and a finished 2-step run (runs/done)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    write_inputs(root)
    args = [
        *BASE,
        f"data.source={root / 'corpus.txt'}",
        f"data.cache_dir={root / 'cache'}",
        f"run.out_dir={root / 'runs'}",
        "run.name=done",
    ]
    proc = subprocess.run(train_command(args), cwd=root, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "runs" / "done" / "checkpoints" / "step_0000002").is_dir()
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, files with a hash of their bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody can write: a read-only tmpfs when we may mount (root), else permission bits."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("running as root and cannot mount a read-only tmpfs, so no folder here is read-only")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


# (id, overrides, what the error line must contain); {i} is the inputs folder, {t} the case's own tmp folder.
CONFIG_CASES = [
    ("steps_zero", ["train.steps=0"], ["train.steps"]),
    ("zero_stage_3", ["train.zero_stage=3"], ["train.zero_stage"]),
    ("precision_bf16", ["train.precision=bf16"], ["train.precision", "amp_bf16"]),
    ("pure_bf16_zero1", ["train.precision=pure_bf16", "train.zero_stage=1"], ["train.zero_stage=0"]),
    ("checkpointing_unknown", ["train.activation_checkpointing=some"], ["train.activation_checkpointing"]),
    ("micro_batch_zero", ["train.micro_batch_size=0"], ["train.micro_batch_size"]),
    ("batch_not_divisible", ["train.global_batch_size=9"], ["train.global_batch_size=9"]),
    ("save_every_zero", ["train.save_every=0"], ["train.save_every=0"]),
    ("eval_every_zero", ["train.eval_every=0"], ["train.eval_every=0"]),
    ("log_every_zero", ["train.log_every=0"], ["train.log_every=0"]),
    ("stop_at_negative", ["train.stop_at=-3"], ["train.stop_at=-3"]),
    ("stop_at_past_steps", ["train.stop_at=5"], ["train.stop_at=5", "train.steps=2"]),
    ("seq_len_past_model", ["data.seq_len=2048"], ["data.seq_len=2048", "model.max_seq_len"]),
    ("model_size_unknown", ["model.size=huge"], ["model.size"]),
    ("model_vocab_zero", ["model.vocab_size=0"], ["model.vocab_size"]),
    ("data_vocab_too_small", ["data.vocab_size=100"], ["data.vocab_size"]),
    ("val_fraction_zero", ["data.val_fraction=0"], ["data.val_fraction"]),
    ("wandb_mode_unknown", ["log.wandb=maybe"], ["log.wandb"]),
    ("attack_unknown", ["faults.attack=bitflip"], ["faults.attack"]),
]
STRATEGY_CASES = [
    ("registry_name_unknown", ["param.name=nope"], ["param", "full"]),
    ("strategy_key_unknown", ["+param.bogus=1"], ["param.bogus"]),
    ("state_dtype_unknown", ["optim.state_dtype=int4"], ["optim.state_dtype"]),
    ("robust_agg_with_zero2", ["agg=flag", "train.zero_stage=2"], ["agg=flag", "train.zero_stage=0"]),
    ("step_in_backward_median", ["optim.step_in_backward=true", "agg=median"], ["agg=mean"]),
    ("sltrain_rank_too_big", ["param=sltrain", "param.rank=64"], ["param.rank=64"]),
    ("sst_rank_zero", ["param=sst", "param.rank=0"], ["param.rank=0"]),
    ("sst_rank_above_layer", ["param=sst", "param.rank=65"], ["param.rank=65", "64"]),
    ("multi_krum_one_worker", ["agg=multi_krum"], ["agg=multi_krum", "this run has 1"]),
    ("trimmed_mean_one_worker", ["agg=trimmed_mean"], ["agg=trimmed_mean", "this run has 1"]),
    ("median_one_worker", ["agg=median"], ["agg=median", "this run has 1"]),
    ("flag_one_worker", ["agg=flag"], ["agg=flag", "this run has 1"]),
]
PATH_CASES = [
    ("out_dir_under_proc", ["run.out_dir=/proc/slimtrain-x"], ["run.out_dir"]),
    ("out_dir_is_a_file", ["run.out_dir={i}/a_file"], ["run.out_dir", "a_file"]),
    ("out_dir_under_a_file", ["run.out_dir={i}/a_file/runs"], ["run.out_dir", "a_file"]),
    ("cache_dir_under_proc", ["data.cache_dir=/proc/slimtrain-x"], ["data.cache_dir"]),
    ("cache_dir_is_a_file", ["data.cache_dir={i}/a_file"], ["data.cache_dir", "a_file"]),
    ("out_dir_read_only", ["run.out_dir={t}/read_only/runs"], ["run.out_dir", "read_only"]),
    ("cache_dir_read_only", ["data.cache_dir={t}/read_only/cache"], ["data.cache_dir", "read_only"]),
]
DATA_CASES = [
    ("source_missing", ["data.source={i}/missing.txt"], ["data.source", "missing.txt"]),
    ("source_folder_without_text", ["data.source={i}/no_text_folder"], ["no_text_folder", "no .json", "table.csv"]),
    ("source_empty_folder", ["data.source={i}/empty_folder"], ["empty_folder", "it is empty"]),
    ("source_glob_matches_nothing", ["data.source={i}/*.nothing.txt"], ["data.source", "matches no file"]),
    ("source_empty_file", ["data.source={i}/empty.txt"], ["empty.txt", "is empty"]),
    ("source_mixed_formats", ["data.source={i}/mixed"], ["mixed", "must all be one of"]),
    ("source_unknown_format", ["data.source={i}/notes.csv"], ["notes.csv", "must all be one of"]),
    ("corpus_too_small_for_vocab", ["data.source={i}/tiny.txt"], ["data.vocab_size=512", "tiny.txt", "too small"]),
    ("jsonl_number_text", ["data.source={i}/number.jsonl"], ["number.jsonl line 1", "data.text_field='text'"]),
    ("jsonl_late_bad_row", ["data.source={i}/late_number.jsonl"], ["late_number.jsonl line 151", "data.text_field"]),
    ("jsonl_malformed", ["data.source={i}/malformed.jsonl"], ["malformed.jsonl line 2", "not valid JSON"]),
    ("jsonl_row_not_object", ["data.source={i}/list_row.jsonl"], ["list_row.jsonl line 1", "not an object"]),
    ("jsonl_key_missing", ["data.source={i}/no_key.jsonl"], ["data.text_field='text'", "no_key.jsonl line 1", "body"]),
    ("jsonl_binary", ["data.source={i}/binary.jsonl"], ["binary.jsonl", "binary"]),
    ("json_array_malformed", ["data.source={i}/malformed.json"], ["malformed.json", "not valid JSON"]),
    ("text_binary", ["data.source={i}/binary.txt"], ["binary.txt", "binary"]),
    ("parquet_not_parquet", ["data.source={i}/not.parquet"], ["not.parquet", "parquet"]),
    ("parquet_number_text", ["data.source={i}/numbers.parquet"], ["numbers.parquet row 1", "data.text_field"]),
    ("parquet_column_missing", ["data.source={i}/body.parquet"], ["data.text_field='text'", "body.parquet", "body"]),
    ("tokenizer_missing", ["data.tokenizer={i}/missing.model"], ["data.tokenizer", "missing.model"]),
    ("tokenizer_not_a_model", ["data.tokenizer={i}/garbage.model"], ["data.tokenizer", "garbage.model"]),
    ("model_vocab_below_tokenizer", ["model.vocab_size=100"], ["model.vocab_size=100", "512"]),
]
RUN_CASES = [
    ("wandb_online_without_key", ["log.wandb=online"], ["log.wandb=online", "WANDB_API_KEY", "log.wandb=offline"]),
    ("wandb_online_server_unreachable", ["log.wandb=online"], ["log.wandb=online", "cannot reach"]),
    ("resume_other_model_size", ["run.name=done", "model.size=20m"], ["model.size=debug", "done"]),
    ("resume_other_param", ["run.name=done", "param=sltrain"], ["param.name=full"]),
    ("resume_other_optim", ["run.name=done", "optim=dct_adamw"], ["optim.name=adamw"]),
    ("resume_other_model_vocab", ["run.name=done", "model.vocab_size=1000"], ["model.vocab_size=512"]),
    (
        "resume_given_checkpoint_other_size",
        ["train.resume={t}/runs/done/checkpoints/step_0000002", "model.size=20m"],
        ["model.size=debug", "step_0000002"],
    ),
    ("resume_missing_checkpoint", ["train.resume={t}/nope"], ["train.resume", "nope"]),
    ("resume_not_a_checkpoint", ["train.resume={t}/runs/done"], ["train.resume", "done"]),
]
HYDRA_CASES = [  # Hydra's own errors: another branch turns them into one line (issue 17 item 5)
    pytest.param("unknown_group_choice", ["agg=nope"], ["agg"], id="unknown_group_choice"),
    pytest.param("unknown_key", ["train.sptes=5"], ["train.sptes"], id="unknown_key"),
    pytest.param("unknown_key_added", ["+train.setps=5"], ["train.setps"], id="unknown_key_added"),
    pytest.param("wrong_type", ["train.steps=abc"], ["train.steps"], id="wrong_type"),
]
CASES = [
    pytest.param(*case, id=case[0]) for case in CONFIG_CASES + STRATEGY_CASES + PATH_CASES + DATA_CASES + RUN_CASES
]
CASES += HYDRA_CASES


def case_env(case_id: str, tmp_path: Path) -> dict:
    env = train_env()
    for key in (
        "WANDB_API_KEY",
        "WANDB_BASE_URL",
        "WANDB_IDENTITY_TOKEN_FILE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        env.pop(key, None)
    env["NETRC"] = str(tmp_path / "no-netrc")  # no key from the user's ~/.netrc either
    if case_id == "wandb_online_server_unreachable":
        env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    return env


def run_case(inputs: Path, tmp_path: Path, case_id: str, overrides: list[str]):
    """(the finished process, the run folder's snapshot before, and after)."""
    runs = tmp_path / "runs"
    shutil.copytree(inputs / "runs", runs)
    before = snapshot(runs)
    args = [
        *BASE,
        f"data.source={inputs / 'corpus.txt'}",
        f"data.cache_dir={inputs / 'cache'}",
        f"run.out_dir={runs}",
        "run.name=fresh",
        *(o.format(i=inputs, t=tmp_path) for o in overrides),
    ]
    with read_only_folder(tmp_path / "read_only") if "read_only" in case_id else contextlib.nullcontext():
        proc = subprocess.run(
            train_command(args),
            cwd=tmp_path,
            env=case_env(case_id, tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
    return proc, before, snapshot(runs)


@pytest.fixture(scope="session")
def started_cases(inputs, request, tmp_path_factory):
    """Every selected case started at once, one process per CPU core at a time (each is mostly Python's imports)."""
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    started = {}
    for item in request.session.items:
        if getattr(item, "originalname", "") == TABLE_TEST and hasattr(item, "callspec"):
            params = item.callspec.params
            tmp = tmp_path_factory.mktemp(params["case_id"])
            started[params["case_id"]] = pool.submit(run_case, inputs, tmp, params["case_id"], params["overrides"])
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case_id, overrides, expected", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_no_run(started_cases, inputs, case_id, overrides, expected):
    proc, before, after = started_cases[case_id].result()
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    missing = [text.format(i=inputs) for text in expected if text.format(i=inputs) not in lines[0]]
    assert not missing, f"{missing} not in: {lines[0]}"
    assert after == before  # no run directory made, no file of the finished run touched


TABLE_TEST = test_bad_input_is_one_line_exit_2_and_changes_no_run.__name__


def test_the_table_is_big_enough():
    assert len(CASES) - len(HYDRA_CASES) >= 40
