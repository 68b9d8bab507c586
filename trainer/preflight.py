"""Checks that run before any file of the run is written: the folders can be written, wandb can start, the model's
vocabulary holds the tokenizer's. Each failure is a ValueError of one line naming the config key and what to
change (train.py exits 2), instead of an OSError or a wandb traceback after the model is built.
"""

from __future__ import annotations

import netrc
import os
import socket
import tempfile
from urllib.parse import urlparse

from trainer.config import Config, LogConfig

WANDB_URL = "https://api.wandb.ai"
CONNECT_TIMEOUT_S = 5.0  # a host that drops packets fails within this; a missing network fails at once
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_writable(value: str, key: str) -> None:
    """`value` (a folder, made if missing) can be created and written; probed with a temporary folder in the nearest
    existing ancestor, because permission bits say nothing for root, /proc or a read-only mount."""
    path = os.path.abspath(os.path.expanduser(value))
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise ValueError(f"{key}={value!r}: {base} is a file, not a folder; set {key} to a folder path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".slimtrain-probe-", dir=base))
    except OSError as e:
        raise ValueError(
            f"{key}={value!r}: cannot create folders in {base} ({e.strerror or e}); set {key} to a writable folder"
        ) from None


def check_folders(cfg: Config, run_dir: str) -> None:
    """The run's folders. data.cache_dir is checked where the cache is built (trainer/data.py): a cache prepared
    ahead of time may sit on a read-only filesystem."""
    check_writable(cfg.run.out_dir, "run.out_dir")
    if os.path.exists(run_dir) and not (os.path.isdir(run_dir) and os.access(run_dir, os.W_OK)):
        raise ValueError(
            f"run.name={os.path.basename(run_dir)!r}: {run_dir} is not a writable folder; "
            f"choose another run.name or fix that path"
        )


def _has_netrc_key(host: str, environ) -> bool:
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def _unreachable(url: str) -> str | None:
    """Why `url`'s host cannot be reached over TCP, or None (also None behind a proxy: we cannot tell)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{parsed.hostname}:{port}: {e.strerror or e}"
    return None


def check_wandb(cfg: LogConfig, environ=None) -> None:
    """log.wandb=online needs a key and the server: without them wandb.init fails after 11-97 s with a traceback."""
    if cfg.wandb != "online":
        return
    environ = os.environ if environ is None else environ
    url = environ.get("WANDB_BASE_URL", WANDB_URL)
    fix = "or set log.wandb=offline (sync later with `wandb sync`) or log.wandb=disabled"
    has_key = environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if not has_key and not _has_netrc_key(urlparse(url).hostname or "", environ):
        raise ValueError(f"log.wandb=online: no wandb API key found; set WANDB_API_KEY (or run `wandb login`), {fix}")
    reason = None if any(environ.get(v) for v in PROXY_VARS) else _unreachable(url)
    if reason:
        raise ValueError(f"log.wandb=online: cannot reach the wandb server ({reason}); check the network, {fix}")


def check_vocab(cfg: Config, tokenizer_vocab: int) -> None:
    """An embedding smaller than the tokenizer's vocabulary would index past its end at the first batch."""
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < tokenizer_vocab:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is below the tokenizer's {tokenizer_vocab} tokens; "
            f"set model.vocab_size>={tokenizer_vocab} or leave it unset (null: the tokenizer's size)"
        )
