from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def tiny_engine(tiny_pair, engine):
    """A tiny llama engine whose draft differs from its target, so acceptance varies."""
    target, draft = tiny_pair("llama")
    return engine(target, draft, 4, max_seq_len=128)


@pytest.fixture(scope="session")
def tritonserver_env():
    """The environment with nvidia-pytriton (made by `make install`). Missing: the server tests skip, unless
    PARD_REQUIRE_TRITONSERVER=1 (CI) makes that a failure."""
    from pard_export.errors import PardExportError
    from pard_export.triton_repo.server import DEFAULT_ENV, site_packages

    env = os.environ.get("PARD_TRITONSERVER_ENV", str(DEFAULT_ENV))
    try:
        site_packages(env)
    except PardExportError as e:
        if os.environ.get("PARD_REQUIRE_TRITONSERVER") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))
    return env
