"""CPC2 run as a separate command (make install puts it in .venv/tools/cpc2)."""
import pytest

from lorakit.domains.genomics import external
from lorakit.domains.genomics.metrics import binary_metrics
from lorakit.domains.genomics.synthetic import synthetic_transcripts
from lorakit.errors import LoraKitError

needs_cpc2 = pytest.mark.skipif(external.find_cpc2() is None,
                                reason="cpc2 not installed (make install puts it in .venv)")


@needs_cpc2
def test_cpc2_scores_every_record_and_tells_coding_from_noncoding():
    records, labels = synthetic_transcripts(40, 40, seed=3, hard_fraction=0.0)
    probs = external.run_cpc2(records)
    assert set(probs) == {r.id for r in records}
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    auroc = binary_metrics(labels, [probs[r.id] for r in records])["auroc"]
    assert auroc > 0.9


def test_missing_cpc2_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("LORAKIT_CPC2", raising=False)
    monkeypatch.setattr(external.shutil, "which", lambda name: None)
    monkeypatch.setattr(external, "TOOL_ENV", tmp_path / "no-tool-env")
    assert external.find_cpc2() is None
    with pytest.raises(LoraKitError, match="pip install cpc2-standalone"):
        external.run_cpc2([])


@pytest.mark.parametrize("make_folder", [False, True], ids=["missing", "a folder"])
def test_lorakit_cpc2_naming_no_file_is_an_error_not_a_skip(monkeypatch, tmp_path,
                                                             make_folder):
    chosen = tmp_path / "no-such-cpc2"
    if make_folder:
        chosen.mkdir()
    monkeypatch.setenv("LORAKIT_CPC2", str(chosen))
    with pytest.raises(LoraKitError, match="LORAKIT_CPC2=.*no-such-cpc2 is not a file"):
        external.find_cpc2()
