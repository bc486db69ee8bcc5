"""Shared fixtures: one tiny synthetic checkpoint per test session."""

from __future__ import annotations

import os

import pytest

# Nothing in the suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from sdopt.zoo import write_model

    return write_model("tiny", tmp_path_factory.mktemp("zoo") / "tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    import sdopt

    return sdopt.load(tiny_model)


# A request small enough for a 2-core machine, large enough to exercise the whole loop.
SMALL = dict(prompt="a red fox in the snow", seed=7, steps=4, height=64, width=64, guidance_scale=7.5)
