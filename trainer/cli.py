"""The command line around Hydra: its errors as the project's one line, and `-m` sweeps that run every job.

Hydra reports a bad override itself (5-12 lines, exit 1) before the task function runs. `one_line_errors`
sets HYDRA_FULL_ERROR for the call, Hydra's documented switch to raise instead, and turns what it raises
into `error: ...` with exit code 2, naming the key and the valid choices.

Under `-m`, the task function returns instead of exiting (a `sys.exit` inside it ends the sweep after job 0)
and records each job's exit code in a `JobLog`; each job gets its own run directory, named from the values
swept (`sweep_run_name`).
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from trainer.schema import GROUPS, closest, init_fields, unknown_keys_message

PREEMPTED = 75  # the trainer's "stopped cleanly, resume me" exit code
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def print_error(message: str) -> None:
    """From the main rank only: under torchrun every rank fails the same check."""
    from launch.env import read_dist_env

    if read_dist_env().is_main:
        print(f"error: {message}", file=sys.stderr, flush=True)


def _default_name(cls) -> str:
    for f in fields(cls):
        if f.name == "name" and f.default is not MISSING:
            return str(f.default)
    return ""


def _missing_option(exc: MissingConfigException) -> str | None:
    """`param=nope` -> 'unknown param=nope (did you mean ...?); choose one of: full, lowrank, ...'."""
    if not exc.missing_cfg_file or "/" not in exc.missing_cfg_file:
        return None
    group, choice = exc.missing_cfg_file.rsplit("/", 1)
    options = sorted(exc.options or [])
    near = closest(choice, options)
    hint = f" (did you mean {group}={near}?)" if near else ""
    return f"unknown {group}={choice}{hint}; choose one of: {', '.join(options)}"


def _omegaconf_cause(exc: OmegaConfBaseException) -> str | None:
    """An unknown key or a value of the wrong type, named by its full key."""
    key, cls = getattr(exc, "full_key", None), getattr(exc, "object_type", None)
    if not key:
        return None
    first = str(exc).splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and is_dataclass(cls):
        prefix, _, leaf = key.rpartition(".")
        where = f" for {prefix}={_default_name(cls)}" if prefix in GROUPS else ""
        return unknown_keys_message(prefix, [leaf], init_fields(cls), where)
    section = _section_type(key)
    if section is not None:  # `model=debug`: a section given a value
        keys = ", ".join(f"{key}.{k}" for k in init_fields(section))
        return f"{key} is a section, not a value; set its keys instead: {keys}"
    return f"{key}: {first}"


def _section_type(key: str):
    """The dataclass of a top-level section of the schema (model, data, train, ...), else None."""
    from trainer.config import Config

    hints = {f.name: f.default_factory for f in fields(Config) if f.default_factory is not MISSING}
    made = hints[key]() if key in hints and key not in GROUPS else None
    return type(made) if is_dataclass(made) else None


def _plain(exc: BaseException) -> str:
    """Hydra's own message on one line, without the search path and the HYDRA_FULL_ERROR hint."""
    text = str(exc).split("Config search path")[0].split("Set the environment variable HYDRA_FULL_ERROR")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


def hydra_error_line(exc: BaseException) -> str:
    """The one line (no 'error: ' prefix) for an exception Hydra or OmegaConf raised while composing."""
    if isinstance(exc, MissingConfigException):
        line = _missing_option(exc)
        if line:
            return line
    for candidate in (exc.__cause__, exc):
        if isinstance(candidate, OmegaConfBaseException):
            line = _omegaconf_cause(candidate)
            if line:
                return line
    return _plain(exc)


def compose_config(overrides: list[str]):
    """The typed config of these overrides, composed over conf/ as train.py does (without importing train.py,
    which pulls in DeepSpeed), with the strategies registered by the caller. A Hydra error becomes a one-line
    ValueError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from trainer.config import Config, resolve
    from trainer.schema import check_keys

    ConfigStore.instance().store(name="schema", node=Config)  # as train.py
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            raw = compose(config_name="config", overrides=overrides)
        check_keys(raw)
        typed = OmegaConf.to_object(raw)
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(hydra_error_line(e)) from None
    return resolve(typed)


def error_line(exc: BaseException) -> str:
    """A ValueError's one line: OmegaConf's own (ValidationError is a ValueError) spans several lines."""
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return hydra_error_line(exc)
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


@contextmanager
def one_line_errors():
    """Run Hydra so that its composition errors end in one `error:` line and exit code 2. A user who set
    HYDRA_FULL_ERROR=1 still gets Hydra's full trace."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing and exiting 1
    try:
        yield
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # the task itself returns its errors
        if before == "1":
            raise
        print_error(error_line(e))
        sys.exit(2)
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


# --- sweeps ------------------------------------------------------------------------------------------
def swept_keys(overrides: list[str]) -> list[str]:
    """The keys given several values on the command line (`param=full,sltrain`, `train.seed=range(3)`), in
    command-line order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports a malformed override itself, one line via one_line_errors
        return []
    return list(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))


def argv_overrides(argv: list[str]) -> list[str]:
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return list(args.overrides or [])


def sweep_run_name(base: str, job_overrides: list[str], swept: list[str], job_num: int) -> str:
    """`base-param=full` from the job's swept values (run.name itself excluded); `base-job3` when none is
    known (a sweeper plugin's own search space) or the values are too long for a folder name."""
    values = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[-1] for o in job_overrides}
    picked = [f"{key}={values[key]}" for key in swept if key != "run.name" and key in values]
    if not picked and "run.name" in swept:
        return base  # the sweep names its runs itself
    tag = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(picked))
    if not tag or len(tag) > 100:
        tag = f"job{job_num}"
    return f"{base}-{tag}"


@dataclass
class JobLog:
    """The exit codes of the jobs this process ran: one for a plain run, one per point of a `-m` sweep."""

    swept: list[str] = field(default_factory=list)
    jobs: list[tuple[str, int]] = field(default_factory=list)

    def add(self, name: str, code: int) -> None:
        self.jobs.append((name, code))

    def exit_code(self) -> int:
        """The first failure's code; else 75 if any job stopped to be resumed; else 0."""
        failed = [code for _, code in self.jobs if code not in (0, PREEMPTED)]
        if failed:
            return failed[0]
        return PREEMPTED if any(code == PREEMPTED for _, code in self.jobs) else 0

    def summary(self) -> str:
        ok = sum(code == 0 for _, code in self.jobs)
        lines = [f"sweep: {ok} of {len(self.jobs)} job(s) finished"]
        lines += [f"  job {i}: {name}: exit {code}" for i, (name, code) in enumerate(self.jobs)]
        return "\n".join(lines)
