"""What a run owns besides its weights: its tokenizer and its resolved config, kept with every checkpoint.

    runs/NAME/tokenizer.model                    copied at start from wherever data.tokenizer came from
    runs/NAME/checkpoints/step_N/tokenizer.model the tokenizer the weights were trained with
    runs/NAME/checkpoints/step_N/config.yaml     the config with every default filled in (e.g. SLTrain's
                                                 per-size rank) and model.vocab_size set

A data cache can be cleaned and runs/NAME/config.yaml is rewritten by every start, so resume and export
read these copies instead. A resume whose model shape or strategies differ from the checkpoint's stops
before any file is written (check_resume, called in train.py before the run directory is touched); the
resume then trains with the checkpoint's own tokenizer (trainer/rundir.py, once it has been verified).
"""

from __future__ import annotations

import copy
import dataclasses
import filecmp
import os
import shutil

from omegaconf import OmegaConf

from trainer import manifest
from trainer.config import Config, resolve
from trainer.registry import config_name

TOKENIZER = "tokenizer.model"
CONFIG = "config.yaml"
COMPARED = (
    "model.size",
    "param.name",
    "optim.name",
    "agg.name",
    "param",
)  # what a checkpoint's weights and state depend on


def _copy_atomic(src: str, dst: str) -> None:
    if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = f"{dst}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def keep_tokenizer(run_dir: str, tokenizer_path: str) -> None:
    """Main rank, at start: the run's own copy of the tokenizer it trains with."""
    _copy_atomic(tokenizer_path, os.path.join(run_dir, TOKENIZER))


def resolved_config(cfg: Config, vocab_size: int) -> dict:
    """The config as plain data, every strategy default filled in (a config's `resolved(model_size)`)."""
    out = dataclasses.asdict(cfg)
    for group in ("param", "optim", "agg"):
        node = getattr(cfg, group)
        resolved = getattr(node, "resolved", None)
        node = resolved(cfg.model.size) if resolved else node
        # the keys registry.make_config accepts back: the name and every init field
        fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.init}
        out[group] = {"name": config_name(node), **copy.deepcopy(fields)}
    out["model"]["vocab_size"] = cfg.model.vocab_size or vocab_size
    return out


def save_into_checkpoint(directory: str, run_dir: str, cfg: Config, vocab_size: int, tokenizer_path: str) -> None:
    """Rank 0, into the checkpoint's temporary folder before it is sealed (so the manifest covers them)."""
    own = os.path.join(run_dir, TOKENIZER)
    shutil.copyfile(own if os.path.isfile(own) else tokenizer_path, os.path.join(directory, TOKENIZER))
    with open(os.path.join(directory, CONFIG), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(resolved_config(cfg, vocab_size))))


def load_config(path: str) -> Config:
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    return resolve(OmegaConf.to_object(merged))


def checkpoint_config(ckpt_dir: str) -> Config:
    """The checkpoint's own resolved config; for checkpoints older than that, the run directory's."""
    own = os.path.join(ckpt_dir, CONFIG)
    if os.path.isfile(own):
        return load_config(own)
    run_level = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir))), CONFIG)
    if not os.path.isfile(run_level):
        raise ValueError(f"{ckpt_dir} has no {CONFIG} and is not inside a run directory (run/checkpoints/step_N)")
    return load_config(run_level)


def checkpoint_tokenizer(ckpt_dir: str, cfg: Config | None = None) -> str | None:
    """The tokenizer a checkpoint was trained with: its own copy, else the run's, else (older runs) the cache's."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))
    for path in (os.path.join(ckpt_dir, TOKENIZER), os.path.join(run_dir, TOKENIZER)):
        if os.path.isfile(path):
            return path
    if cfg is not None:
        from trainer.data import tokenizer_path

        path = tokenizer_path(cfg.data)
        return path if os.path.isfile(path) else None
    return None


def _resume_candidate(run_dir: str, resume: str) -> str | None:
    """The checkpoint a resume will most likely read (the newest sealed one; checksums are checked later)."""
    if resume == "never":
        return None
    if resume != "auto":
        return resume
    found = manifest.list_checkpoints(os.path.join(run_dir, "checkpoints"))
    return found[0][1] if found else None


def _differences(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    diffs = []
    for path in COMPARED:
        a, b = OmegaConf.select(OmegaConf.create(saved), path), OmegaConf.select(OmegaConf.create(now), path)
        a, b = (OmegaConf.to_container(x) if OmegaConf.is_config(x) else x for x in (a, b))
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [(f"{path}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append((path, a, b))
    return diffs


def check_resume(run_dir: str, cfg: Config) -> None:
    """Before anything is written: refuse a resume with another model shape, strategy or tokenizer than the
    checkpoint's (its own tokenizer is used once it is verified, so a cleaned cache never retrains another)."""
    ckpt = _resume_candidate(run_dir, cfg.train.resume)
    if ckpt is None or not os.path.isfile(os.path.join(ckpt, CONFIG)):
        return
    saved = OmegaConf.to_container(OmegaConf.load(os.path.join(ckpt, CONFIG)))
    diffs = _differences(saved, resolved_config(cfg, saved["model"]["vocab_size"]))
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != saved["model"]["vocab_size"]:
        diffs.append(("model.vocab_size", saved["model"]["vocab_size"], cfg.model.vocab_size))
    if diffs:
        key, was, now = diffs[0]
        raise ValueError(
            f"{ckpt} was trained with {key}={was}, this run has {key}={now}; set {key}={was} to resume it, "
            f"or start a new run (another run.name, or train.resume=never)"
        )
    own = os.path.join(ckpt, TOKENIZER)
    if not os.path.isfile(own):
        return
    given = os.path.expanduser(cfg.data.tokenizer) if cfg.data.tokenizer else None
    if given and os.path.isfile(given) and not filecmp.cmp(given, own, shallow=False):
        raise ValueError(
            f"data.tokenizer={cfg.data.tokenizer!r} is not the tokenizer {ckpt} was trained with; "
            f"drop data.tokenizer to resume with the checkpoint's own, or start a new run"
        )
