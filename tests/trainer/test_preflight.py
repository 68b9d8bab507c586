"""The checks before any file is written: folders that cannot be written, wandb without a key or a server, a model
vocabulary smaller than the tokenizer's. Each is one line naming the key."""

import os
import socket
import subprocess
import time

import pytest

from trainer import preflight
from trainer.config import Config, LogConfig, ModelConfig


def test_writable_folders_pass_and_nothing_is_left(tmp_path):
    preflight.check_writable(str(tmp_path / "new" / "deeper"), "run.out_dir")  # made later; its parent is writable
    preflight.check_writable(str(tmp_path), "run.out_dir")
    assert list(tmp_path.iterdir()) == []  # the probe folder is gone, nothing made


@pytest.mark.parametrize(
    "where, message",
    [
        ("file", r"run.out_dir=.*: .*a_file is a file, not a folder; set run.out_dir to a folder path"),
        ("under_file", r"run.out_dir=.*: .*a_file is a file, not a folder"),
        ("proc", r"run.out_dir='/proc/slimtrain-x': cannot create folders in /proc"),
    ],
)
def test_unwritable_out_dir(tmp_path, where, message):
    (tmp_path / "a_file").write_text("x")
    value = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "runs", "proc": "/proc/slimtrain-x"}[
        where
    ]
    with pytest.raises(ValueError, match=message):
        preflight.check_writable(str(value), "run.out_dir")


def test_read_only_mount(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
    elif subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)], capture_output=True
    ).returncode:
        pytest.skip("root without permission to mount: no folder here is read-only to us")
    try:
        with pytest.raises(
            ValueError,
            match=r"data.cache_dir=.*: cannot create folders in .*ro \((Read-only file system|"
            r"Permission denied)\); set data.cache_dir to a writable folder",
        ):
            preflight.check_writable(str(target / "cache"), "data.cache_dir")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "--lazy", str(target)], check=False)
        else:
            target.chmod(0o755)


def test_check_folders_names_the_key(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cfg = Config()
    cfg.run.out_dir = str(tmp_path / "a_file")
    with pytest.raises(ValueError, match=r"^run.out_dir="):
        preflight.check_folders(cfg, str(tmp_path / "a_file" / "x"))
    cfg.run.out_dir = str(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x").write_text("a file where the run directory goes")
    with pytest.raises(ValueError, match=r"^run.name='x': .*x is not a writable folder"):
        preflight.check_folders(cfg, str(tmp_path / "runs" / "x"))


def no_wandb_env(tmp_path, **extra) -> dict:
    return {"NETRC": str(tmp_path / "netrc"), **extra}


def test_wandb_online_without_a_key_fails_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match=r"^log.wandb=online: no wandb API key found; set WANDB_API_KEY .*log.wandb=offline"
    ):
        preflight.check_wandb(LogConfig(wandb="online"), no_wandb_env(tmp_path))
    assert time.perf_counter() - start < 1.0


def test_wandb_key_from_netrc_then_the_server_is_tried(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login user password abc123\n")
    env = no_wandb_env(tmp_path, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    with pytest.raises(ValueError, match=rf"log.wandb=online: cannot reach the wandb server \(127.0.0.1:{port}: "):
        preflight.check_wandb(LogConfig(wandb="online"), env)
    preflight.check_wandb(
        LogConfig(wandb="online"), {**env, "HTTPS_PROXY": "http://proxy:3128"}
    )  # cannot tell: let wandb try


def test_wandb_reachable_server_passes(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}"}
        preflight.check_wandb(LogConfig(wandb="online"), env)
    preflight.check_wandb(LogConfig(wandb="offline"), {})  # offline and disabled need nothing
    preflight.check_wandb(LogConfig(wandb="disabled"), {})


def test_model_vocab_below_the_tokenizer():
    cfg = Config(model=ModelConfig(vocab_size=100))
    with pytest.raises(
        ValueError, match=r"^model.vocab_size=100 is below the tokenizer's 512 tokens; set model.vocab_size>=512"
    ):
        preflight.check_vocab(cfg, 512)
    preflight.check_vocab(Config(model=ModelConfig(vocab_size=512)), 512)
    preflight.check_vocab(Config(), 512)
