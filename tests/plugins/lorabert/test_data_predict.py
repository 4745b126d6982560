"""TranscriptDataModule sources and errors; `predict` writes the CPC2-like TSV."""
import lightning.pytorch as pl
import pytest

from lorakit.domains.genomics.fasta import Record, write_fasta
from lorakit.domains.genomics.features import longest_orf
from lorakit.errors import DataError
from lorakit.plugins.lorabert.data import TranscriptDataModule
from lorakit.plugins.lorabert.module import LoRABertModule
from lorakit.plugins.lorabert.predict_tsv import COLUMNS, read_predictions


@pytest.fixture
def fasta_pair(tmp_path):
    from lorakit.domains.genomics.synthetic import write_synthetic
    return write_synthetic(tmp_path / "syn", 20, 20, seed=3)


def test_files_are_split_stratified_with_a_fixed_seed(fasta_pair):
    coding, noncoding = fasta_pair
    dm = TranscriptDataModule(coding=str(coding), noncoding=str(noncoding))
    dm.setup("fit")
    assert dm.source == "files"
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 28, "val": 4, "test": 8}
    assert sum(t.label for t in dm.splits["test"]) == 4
    again = TranscriptDataModule(coding=str(coding), noncoding=str(noncoding))
    again.setup("fit")
    assert [t.id for t in again.splits["test"]] == [t.id for t in dm.splits["test"]]


def test_explicit_split_files_take_precedence(fasta_pair, tmp_path):
    coding, noncoding = fasta_pair
    val_c = write_fasta([Record("vc1", "ATG" * 50)], tmp_path / "vc.fa")
    val_n = write_fasta([Record("vn1", "CCA" * 50)], tmp_path / "vn.fa")
    dm = TranscriptDataModule(coding=str(coding), noncoding=str(noncoding),
                              val_coding=str(val_c), val_noncoding=str(val_n))
    dm.setup("fit")
    assert [(t.id, t.label) for t in dm.splits["val"]] == [("vc1", 1), ("vn1", 0)]
    assert len(dm.splits["train"]) + len(dm.splits["test"]) == 40


def test_no_files_means_synthetic_and_files_source_needs_both(tmp_path):
    assert TranscriptDataModule().source == "synthetic"
    with pytest.raises(DataError, match="needs --data.coding FASTA and --data.noncoding"):
        TranscriptDataModule(source="files").setup("fit")
    with pytest.raises(DataError, match="data.source must be"):
        TranscriptDataModule(source="ftp")


def test_an_id_in_both_classes_is_an_error(tmp_path):
    a = write_fasta([Record("tx1", "ACGT" * 20)], tmp_path / "a.fa")
    b = write_fasta([Record("tx1", "ACGA" * 20)], tmp_path / "b.fa")
    with pytest.raises(DataError, match="'tx1' .*appears twice"):
        TranscriptDataModule(coding=str(a), noncoding=str(b)).setup("fit")


def test_bad_fasta_errors_reach_the_user_unchanged(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nACGZ\n")
    good = write_fasta([Record("y", "ACGT" * 20)], tmp_path / "good.fa")
    with pytest.raises(DataError, match=r"bad.fa, record 'x', line 2: character 'Z'"):
        TranscriptDataModule(coding=str(bad), noncoding=str(good)).setup("fit")


def test_predict_writes_one_tsv_row_per_transcript_in_order(tmp_path):
    seqs = {"long_one": "ATG" + "GCC" * 900 + "TAA" + "ACGT" * 200,
            "short_one": "A",                      # shorter than k: reported, kept
            "mid": "CCATGAAATTTGGGTAGCC" * 20}
    fasta = write_fasta([Record(k, v) for k, v in seqs.items()], tmp_path / "new.fa")
    out = tmp_path / "pred" / "predictions.tsv"
    module = LoRABertModule(predictions=str(out))
    dm = TranscriptDataModule(fasta=str(fasta))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match=r"1 transcript.*shorter than k=\d.*short_one"):
        trainer.predict(module, datamodule=dm)
    assert out.read_text().splitlines()[0].split("\t") == COLUMNS
    rows = read_predictions(out)
    assert [r["id"] for r in rows] == list(seqs)
    for r in rows:
        seq = seqs[r["id"]]
        orf = longest_orf(seq)
        assert r["length"] == len(seq)
        assert r["orf_length"] == (orf.length if orf else 0)
        assert 0.0 <= r["coding_probability"] <= 1.0
        assert r["label"] == ("coding" if r["coding_probability"] >= 0.5 else "noncoding")
        assert r["windows"] == module.windows_along(module.windows_of(seq)) and r["coverage"] == 1.0
    # 1,168 codons in frame 0, read max_tokens codons a window
    assert rows[0]["orf_length"] == 2706
    assert rows[0]["windows"] == -(-(len(seqs["long_one"]) // 3) // module.max_tokens)
    assert [p.name for p in out.parent.iterdir()] == ["predictions.tsv"]  # no temp file left


def test_head_tail_predictions_report_partial_coverage(tmp_path):
    fasta = write_fasta([Record("a", "ACGT" * 1000), Record("b", "ACGT" * 50)],
                        tmp_path / "x.fa")
    out = tmp_path / "p.tsv"
    module = LoRABertModule(predictions=str(out), long_mode="head_tail")
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(
        module, datamodule=TranscriptDataModule(fasta=str(fasta)))
    rows = read_predictions(out)
    # one window of max_tokens codons: 3 * max_tokens nucleotides of 4,000
    assert rows[0]["windows"] == 1
    assert rows[0]["coverage"] == pytest.approx(3 * module.max_tokens / 4000, abs=1e-4)
    assert rows[1]["coverage"] == 1.0


def test_a_table_that_is_not_a_prediction_tsv_is_refused(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a\tb\n")
    with pytest.raises(DataError, match="not a lorabert prediction table"):
        read_predictions(path)


def test_short_training_transcripts_are_reported_not_dropped(tmp_path):
    coding = write_fasta([Record(f"c{i}", "ATGGCC" * 30) for i in range(6)]
                         + [Record("tiny", "A")], tmp_path / "c.fa")
    noncoding = write_fasta([Record(f"n{i}", "CCAGGT" * 30) for i in range(6)],
                            tmp_path / "n.fa")
    dm = TranscriptDataModule(coding=str(coding), noncoding=str(noncoding), val_fraction=0,
                              test_fraction=0)
    dm.setup("fit")
    assert "tiny" in [t.id for t in dm.splits["train"]]
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=r"1 transcript.*shorter than k=\d are kept.*tiny"):
        trainer.fit(LoRABertModule(), datamodule=dm)
