"""k-mer tokens: vocabulary, round trip, windows that cover the whole transcript."""
import random

import pytest

from lorakit.domains.genomics.kmer import SPECIAL, KmerTokenizer, kmer_vocab
from lorakit.errors import DataError


def random_seq(n, seed=0):
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def test_vocabulary_is_special_tokens_then_all_kmers():
    vocab = kmer_vocab(3)
    assert vocab[:5] == SPECIAL and len(vocab) == 5 + 64
    assert vocab[5] == "AAA" and vocab[-1] == "TTT"


@pytest.mark.parametrize("k,stride", [(6, 3), (6, 1), (3, 3), (4, 2), (5, 5)])
@pytest.mark.parametrize("n", [7, 50, 301, 1000])
def test_tokenisation_round_trips_exactly(k, stride, n):
    tok = KmerTokenizer(k, stride)
    seq = random_seq(n, seed=n + k)
    ids = tok.ids(seq)
    assert tok.decode_sequence(len(seq), ids) == seq
    # decode() knows no length: exact up to the tail k-mer that sits off the stride grid
    grid = len(seq) - (len(seq) - k) % stride
    assert tok.decode(ids)[:grid] == seq[:grid]


def test_encode_adds_cls_and_sep_and_n_gives_unk():
    tok = KmerTokenizer(6, 3)
    ids = tok.encode("ACGTACNNNACG")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.vocab[ids[1]] == "ACGTAC"
    assert ids[2] == tok.unk_id  # TACNNN


def test_sequence_shorter_than_k_is_one_unknown_token_not_dropped():
    tok = KmerTokenizer(6, 3)
    assert tok.ids("ACG") == [tok.unk_id]
    assert len(tok.windows("ACG", 10)) == 1


def test_vocab_file_round_trip_and_k_read_from_it(tmp_path):
    tok = KmerTokenizer(4, 2)
    tok.save(tmp_path)
    lines = (tmp_path / "vocab.txt").read_text().splitlines()
    assert lines[:5] == SPECIAL and len(lines) == 5 + 256
    back = KmerTokenizer.from_folder(tmp_path)
    assert (back.k, back.stride, back.vocab) == (4, 2, tok.vocab)


def test_dnabert_style_folder_without_stride_file_means_overlapping(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(kmer_vocab(6)) + "\n")
    tok = KmerTokenizer.from_folder(tmp_path)
    assert (tok.k, tok.stride) == (6, 1)


def test_bad_vocab_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="no vocab.txt"):
        KmerTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + ["hello", "world"]))
    with pytest.raises(DataError, match="not a k-mer vocabulary"):
        KmerTokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("n", [6, 100, 763, 764, 5000, 12345])
@pytest.mark.parametrize("overlap", [0, 10])
def test_windows_cover_every_nucleotide(n, overlap):
    tok = KmerTokenizer(6, 3)
    seq = random_seq(n, seed=n)
    wins = tok.windows(seq, max_tokens=254, overlap=overlap)
    covered = [False] * n
    for w in wins:
        assert len(w.ids) <= 256 and w.ids[0] == tok.cls_id and w.ids[-1] == tok.sep_id
        for i in range(w.start, w.end):
            covered[i] = True
    assert all(covered)
    assert wins[0].start == 0 and wins[-1].end == n
    # the windows' k-mers, in order, are exactly the sequence's k-mers (minus overlaps)
    flat = [i for j, w in enumerate(wins) for i in w.ids[1 + (overlap if j else 0):-1]]
    assert flat == tok.ids(seq)


def test_head_tail_keeps_both_ends():
    tok = KmerTokenizer(6, 3)
    seq = random_seq(5000)
    w = tok.head_tail(seq, 254)
    ids = tok.ids(seq)
    assert w.ids[1:-1] == ids[:127] + ids[-127:]
    short = random_seq(300)
    assert tok.head_tail(short, 254).ids[1:-1] == tok.ids(short)
