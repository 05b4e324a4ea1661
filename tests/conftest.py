"""Shared fixtures: a random tiny checkpoint in the real layout, real speech, the PyTorch reference."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may touch the network

import numpy as np
import pytest

from canary_trt.contract import LIBRIVOX_DIR



def librivox_clips() -> dict[str, np.ndarray]:
    """The 5 LibriVox clips of Debian's pocketsphinx-testdata (24.73 s), plus a 1 s cut, a 10 s and a ~35 s join."""
    from canary_trt.audio import load_audio

    paths = sorted(LIBRIVOX_DIR.glob("*.wav"))
    if len(paths) != 5:
        pytest.fail(f"expected 5 LibriVox clips in {LIBRIVOX_DIR}: install Debian's pocketsphinx-testdata")
    clips = {p.stem.rsplit("-", 1)[-1]: load_audio(p) for p in paths}
    clips["1s"] = clips["0880"][:16000]
    clips["10s"] = np.concatenate([clips["0870"], clips["0880"]])[: 10 * 16000]
    clips["35s"] = np.concatenate([*clips.values(), clips["0870"], clips["0880"]])[: 35 * 16000]
    return clips


@pytest.fixture(scope="session")
def clips() -> dict[str, np.ndarray]:
    return librivox_clips()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from canary_trt.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    from canary_trt.reference import Reference

    return Reference(tiny_checkpoint)


@pytest.fixture(scope="session")
def cpu_build(tiny_checkpoint, tmp_path_factory):
    """`canary-trt export --target cpu` of the tiny checkpoint (fp32: token-exact with the reference)."""
    from canary_trt.export.build import export

    out = tmp_path_factory.mktemp("build-cpu")
    export(tiny_checkpoint.path, out, target="cpu", log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def llm_build(tiny_checkpoint, tmp_path_factory):
    """`canary-trt export --target cpu --llm-mode` of the tiny checkpoint: the ASR models and the base LLM."""
    from canary_trt.export.build import export

    out = tmp_path_factory.mktemp("build-llm")
    export(tiny_checkpoint.path, out, target="cpu", llm_mode=True, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def server(cpu_build):
    """That build served by the bundled tritonserver on loopback: one server per test module."""
    from canary_trt.server import TritonServer

    with TritonServer(cpu_build / "model_repository") as running:
        yield running


# The fast tier, `pytest -m "not slow"` (README): a test is `slow` when it needs a model run through NeMo or
# PyTorch, an export, or a live server, whether through these fixtures or its module's own (pytestmark).
HEAVY_FIXTURES = {"reference", "cpu_build", "llm_build", "server"}


def pytest_collection_modifyitems(items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
