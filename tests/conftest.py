"""Shared fixtures: small Hugging Face-format Llama checkpoints and FFBA adapters on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from flora_export.adapters import FFBAConfig, attach_ffba, save_adapter
from flora_export.model import PRESETS, random_model, save_hf_checkpoint
from flora_export.model.tokenizer import byte_level_tokenizer
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """On a fatal signal in a native library, dump only the faulting thread: the test's own
    frames stay within the few lines a CI log keeps (the idle helper threads of the
    transport tests would push them out)."""
    import faulthandler
    import os
    import sys

    global _FAULT_FILE   # the capture plugin redirects fd 2 during tests: keep our own copy
    _FAULT_FILE = os.fdopen(os.dup(sys.__stderr__.fileno()), "w")
    faulthandler.enable(file=_FAULT_FILE, all_threads=False)


def write_base(path: Path, cfg=None, seed: int = 0, dtype=None) -> Path:
    """A random-weight HF Llama directory (config.json, model.safetensors, tokenizer.json)."""
    cfg = cfg or PRESETS["tiny"]
    path.mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer(cfg.vocab_size, cfg.bos_token_id).save(str(path / "tokenizer.json"))
    save_hf_checkpoint(random_model(cfg, seed=seed), path, dtype=dtype)
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def randomize_adapter(model, seed: int = 0, std: float = 0.05) -> None:
    """Give every adapter weight random values (a fresh adapter is a no-op: B = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, std, generator=gen)


def write_ffba(base_dir: Path, path: Path, cfg: FFBAConfig, seed: int = 0) -> Path:
    from flora_export.model import load_model

    model = load_model(base_dir)
    attach_ffba(model, cfg)
    randomize_adapter(model, seed)
    save_adapter(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return write_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_ffba(tiny_base, tmp_path_factory) -> Path:
    """FFBA width 40 (padded to 64 when fused), SiLU: exercises padding and activation."""
    return write_ffba(tiny_base, tmp_path_factory.mktemp("tiny_ffba"),
                      FFBAConfig(width=40, alpha=80.0, activation="silu"))


def shapes(**changes):
    """The tiny preset with some fields changed."""
    return dataclasses.replace(PRESETS["tiny"], **changes)


def fp32_export(base: Path, adapter: Path, target: str, out: Path):
    """(model, out, manifest) of an fp32 export of base + adapter for `target`."""
    from flora_export.adapters import load_adapter
    from flora_export.export import ExportConfig, export
    from flora_export.model import load_model

    model = load_model(base)
    load_adapter(model, adapter)
    return model, out, export(model, target, out, ExportConfig(quant="fp32", max_seq=128))


def max_step_error(step, model, seed: int, prompt: int = 10, total: int = 20) -> float:
    """Largest |logit| difference between an exported step function and the eager model
    over a prefill of `prompt` tokens and single-token decode steps up to `total`."""
    tokens = torch.randint(0, model.config.vocab_size, (1, total),
                           generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(tokens)[0]
    got = [step(tokens[:, :prompt], torch.tensor([0]))]
    got += [step(tokens[:, i:i + 1], torch.tensor([i])) for i in range(prompt, total)]
    return (torch.stack(got) - ref[prompt - 1:]).abs().max().item()


@pytest.fixture(scope="session")
def bench_et_export(tiny_base, tiny_ffba, tmp_path_factory) -> Path:
    """An fp32 ExecuTorch export of tiny_base + tiny_ffba, shared by the flora-bench tests."""
    return fp32_export(tiny_base, tiny_ffba, "android", tmp_path_factory.mktemp("bench_et") / "et")[1]


@pytest.fixture(scope="session")
def fake_phone(tmp_path_factory):
    """(serial, FakeAdbd): the real `adb` client, on a private adb server port, connected to
    tests/fake_adbd.py, a TEST DOUBLE of a device whose shell commands run on this host."""
    import os
    import shutil
    import subprocess

    from fake_adbd import FakeAdbd

    if shutil.which("adb") is None:
        pytest.skip("needs the adb client (apt-get install adb; .ci/run does)")
    daemon = FakeAdbd(tmp_path_factory.mktemp("fake-device"))
    env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(free_port())}
    mp = pytest.MonkeyPatch()
    mp.setenv("ANDROID_ADB_SERVER_PORT", env["ANDROID_ADB_SERVER_PORT"])
    subprocess.run(["adb", "start-server"], env=env, capture_output=True, timeout=60)
    serial = f"127.0.0.1:{daemon.port}"
    out = subprocess.run(["adb", "connect", serial], env=env, capture_output=True, text=True,
                         timeout=60)
    assert "connected" in out.stdout, out.stdout + out.stderr
    yield serial, daemon
    subprocess.run(["adb", "kill-server"], env=env, capture_output=True, timeout=60)
    mp.undo()
    daemon.close()
