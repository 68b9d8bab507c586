"""Prepare a corpus ahead of training: train (or check) the tokenizer and tokenize into the cache train.py uses.

    python -m trainer.prepare data.source=corpus.txt data.vocab_size=32000 [data.num_workers=8]

Takes the same `data.*` overrides as train.py (the cache key is the same, so the run then starts at once).
A streamed hub source (data.max_tokens=0) is written chunk by chunk until it ends or you stop it: the run
uses the chunks on disk and tokenizes the rest while it trains.
On a cluster, run it once before submitting, on a filesystem the nodes share (data.cache_dir); the job's
ranks then find the cache instead of waiting for rank 0 to build it.
"""

from __future__ import annotations

import os
import sys
import time

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer import corpus, data, stream
from trainer.config import DataConfig


def parse(argv: list[str]) -> DataConfig:
    """`data.key=value` (or `key=value`) overrides over DataConfig's defaults; anything else is an error."""
    items = []
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"{arg!r} is not an override; give data.key=value, e.g. data.source=corpus.txt")
        items.append(arg.removeprefix("data."))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.from_dotlist(items))
    except OmegaConfBaseException as e:
        raise ValueError(f"{str(e).splitlines()[0]}; the data keys are in trainer/config.py (DataConfig)") from None
    return OmegaConf.to_object(merged)


def prepare(cfg: DataConfig) -> dict:
    """Build what train.py would build on its main rank; returns timings and counts."""
    corpus.check_source(cfg)
    tok_path = data.tokenizer_path(cfg)
    out = {"tokenizer": tok_path}
    start = time.perf_counter()
    if not os.path.exists(tok_path):
        print(f"prepare: training a {cfg.vocab_size}-token BPE tokenizer on {cfg.source}", flush=True)
        data.train_tokenizer(cfg, tok_path)
        out["tokenizer_s"] = time.perf_counter() - start
        print(f"prepare: tokenizer trained in {out['tokenizer_s']:.1f} s: {tok_path}", flush=True)
    data.load_tokenizer(tok_path)
    start = time.perf_counter()
    if stream.is_stream(cfg):  # the whole stream, chunk by chunk; stop it any time, the chunks written stay usable
        prefix = os.path.join(os.path.expanduser(cfg.cache_dir), f"tokens-{data._token_cache_key(cfg, tok_path)}")
        base = stream.base_path(cfg, prefix)
        stream.produce(cfg, tok_path, base, cfg.num_workers or os.cpu_count() or 1)
        state = stream.read_state(base)
        tokens = (state["num_chunks"] - 1) * cfg.stream_chunk_tokens + state["last_tokens"]
        return {**out, "tokens": tokens, "tokens_path": base + ".*.bin", "tokenize_s": time.perf_counter() - start}
    corpus_data = data.prepare(cfg, True, lambda: None)
    out.update(
        tokens=len(corpus_data.tokens), tokens_path=corpus_data.tokens.filename, tokenize_s=time.perf_counter() - start
    )
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        out = prepare(parse(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"prepare: {out['tokens']:,} tokens in {out['tokens_path']} (tokenizer {out['tokenizer']}); "
        f"train.py with the same data settings starts from this cache",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
