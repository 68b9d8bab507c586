"""models/meta.py: telling value-less tensors apart, and caches that keep fake tensors away from real runs."""

import gc
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from models import is_fake_or_meta
from models.meta import tensor_cache


def test_is_fake_or_meta():
    with FakeTensorMode():
        fake = torch.empty(3)
        fake_param = torch.nn.Parameter(torch.empty(3))
    assert is_fake_or_meta(fake) and is_fake_or_meta(fake_param) and is_fake_or_meta(torch.empty(3, device="meta"))
    assert not is_fake_or_meta(torch.empty(3)) and not is_fake_or_meta(torch.nn.Parameter(torch.empty(3)))


def test_tensor_cache_is_per_fake_mode_and_freed_with_it():
    real_cache = {}
    assert tensor_cache("t", real_cache) is real_cache
    mode = FakeTensorMode()
    with mode:
        cache = tensor_cache("t", real_cache)
        cache["x"] = torch.zeros(4)  # a fake tensor refers to its mode: the mode must still be collectable
        assert tensor_cache("t", real_cache) is cache and cache is not real_cache
    with FakeTensorMode():
        assert tensor_cache("t", real_cache) == {}  # another mode starts empty
    assert real_cache == {}
    ref = weakref.ref(mode)
    del mode, cache
    gc.collect()
    assert ref() is None
