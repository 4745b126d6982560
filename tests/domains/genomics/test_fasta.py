"""FASTA reading: plain and gzip, U -> T, and one clear error per kind of bad input."""
import gzip

import pytest

from lorakit.domains.genomics.fasta import Record, read_fasta, write_fasta
from lorakit.errors import DataError


def write(tmp_path, name, text, gz=False):
    path = tmp_path / name
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_reads_plain_and_gzip_alike_with_u_as_t_and_upper_case(tmp_path):
    text = ">tx1 some gene\nACGU\nacgt\n>tx2\nNNAC\n"
    plain = read_fasta(write(tmp_path, "a.fa", text))
    gz = read_fasta(write(tmp_path, "a.fa.gz", text, gz=True))
    assert plain == gz
    assert [(r.id, r.seq, r.description, r.line) for r in plain] == [
        ("tx1", "ACGTACGT", "some gene", 1), ("tx2", "NNAC", "", 4)]


def test_gzip_is_detected_by_content_not_by_name(tmp_path):
    path = write(tmp_path, "no_suffix.fa", ">a\nACGT\n", gz=True)
    assert read_fasta(path)[0].seq == "ACGT"


def test_bad_character_names_file_record_and_line(tmp_path):
    path = write(tmp_path, "bad.fa", ">ok\nACGT\n>tx7\nACGT\nACXT\n")
    with pytest.raises(DataError) as err:
        read_fasta(path)
    msg = str(err.value)
    assert "bad.fa" in msg and "'tx7'" in msg and "line 5" in msg and "'X'" in msg


def test_iupac_codes_are_rejected_by_default_and_mapped_to_n_on_request(tmp_path):
    path = write(tmp_path, "iupac.fa", ">r1\nACRYT\n")
    with pytest.raises(DataError, match=r"'r1', line 2.*IUPAC.*ambiguous='N'"):
        read_fasta(path)
    assert read_fasta(path, ambiguous="N")[0].seq == "ACNNT"


def test_iupac_mapping_does_not_excuse_other_characters(tmp_path):
    path = write(tmp_path, "mix.fa", ">r1\nACR*T\n")
    with pytest.raises(DataError, match=r"'\*'"):
        read_fasta(path, ambiguous="N")


def test_empty_sequence_is_an_error_naming_the_record(tmp_path):
    path = write(tmp_path, "e.fa", ">a\nACGT\n>empty_one\n>c\nAC\n")
    with pytest.raises(DataError, match=r"e.fa, record 'empty_one' \(line 3\): empty sequence"):
        read_fasta(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write(tmp_path, "d.fa", ">a\nACGT\n>b\nAC\n>a\nGG\n")
    with pytest.raises(DataError,
                       match=r"record 'a' \(line 5\): duplicate id, first seen on line 1"):
        read_fasta(path)


def test_a_file_that_is_not_fasta_is_refused(tmp_path):
    path = write(tmp_path, "table.tsv", "id\tseq\nA\tACGT\n")
    with pytest.raises(DataError, match=r"table.tsv is not FASTA: line 1"):
        read_fasta(path)


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "blob.fa"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="blob.fa is not a FASTA text file"):
        read_fasta(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_file_is_refused(tmp_path, text):
    with pytest.raises(DataError, match="empty: it holds no records"):
        read_fasta(write(tmp_path, "empty.fa", text))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_fasta(tmp_path / "nope.fa")


def test_write_then_read_round_trips(tmp_path):
    records = [Record("a", "ACGT" * 40, "desc"), Record("b", "N")]
    back = read_fasta(write_fasta(records, tmp_path / "out.fa.gz"))
    assert [(r.id, r.seq, r.description) for r in back] == [("a", "ACGT" * 40, "desc"),
                                                            ("b", "N", "")]
