import os
import tempfile

import pytest


def pytest_configure(config):
    # One tokenizer/token cache for the whole session: each test run trains the tokenizer once.
    os.environ.setdefault("SLIMTRAIN_TEST_CACHE", tempfile.mkdtemp(prefix="slimtrain-test-cache-"))


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
