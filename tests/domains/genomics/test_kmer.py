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


# --- reading frames -------------------------------------------------------------------

def test_frame_f_reads_the_sequence_from_nucleotide_f():
    tok = KmerTokenizer(3, 3, frames=3)
    seq = "ATGGCCAAGTAAC"
    streams = tok.frame_ids(seq)
    assert [[tok.vocab[i] for i in s] for s in streams] == [
        ["ATG", "GCC", "AAG", "TAA", "AAC"],  # 13 nt: the tail codon sits off the grid
        ["TGG", "CCA", "AGT", "AAC"],         # 12 nt: on the grid
        ["GGC", "CAA", "GTA", "AAC"]]         # 11 nt: off the grid again
    one = KmerTokenizer(3, 3)
    assert one.frame_ids(seq) == [one.ids(seq)]


@pytest.mark.parametrize("n", [5, 100, 301, 1000])  # every frame holds >= k nt
def test_every_frame_stream_round_trips_exactly(n):
    tok = KmerTokenizer(3, 3, frames=3)
    seq = random_seq(n, seed=n)
    for f, ids in enumerate(tok.frame_ids(seq)):
        assert tok.decode_sequence(len(seq) - f, ids) == seq[f:]


@pytest.mark.parametrize("n", [5, 100, 770, 771, 772, 5000])
@pytest.mark.parametrize("overlap", [0, 10])
def test_frame_windows_cover_the_whole_sequence_in_every_frame(n, overlap):
    tok = KmerTokenizer(3, 3, frames=3)
    seq = random_seq(n, seed=n)
    wins = tok.frame_windows(seq, max_tokens=256, overlap=overlap)
    assert {w.frame for w in wins} == {0, 1, 2}
    # window-major: all frames of window 0, then window 1, ...
    assert [(w.group, w.frame) for w in wins] == sorted((w.group, w.frame) for w in wins)
    for f in range(3):
        mine = [w for w in wins if w.frame == f]
        assert [w.group for w in mine] == list(range(len(mine)))
        assert mine[0].start == f and mine[-1].end == n
        covered = [False] * n
        for w in mine:
            assert len(w.ids) <= 258 and w.ids[0] == tok.cls_id and w.ids[-1] == tok.sep_id
            for i in range(w.start, w.end):
                covered[i] = True
        assert all(covered[f:]) and not any(covered[:f])
        flat = [i for j, w in enumerate(mine) for i in w.ids[1 + (overlap if j else 0):-1]]
        assert flat == tok.ids(seq[f:])
        # window j of frame f starts f nucleotides after window j of frame 0
        for w, w0 in zip(mine, (w for w in wins if w.frame == 0)):
            if w.end < n and w0.end < n:  # away from the off-grid tail
                assert w.start == w0.start + f


def test_frame_head_tail_is_head_tail_of_every_frame():
    tok = KmerTokenizer(3, 3, frames=3)
    seq = random_seq(5000)
    wins = tok.frame_head_tail(seq, 256)
    assert [w.frame for w in wins] == [0, 1, 2]
    for f, w in enumerate(wins):
        assert w.ids == tok.head_tail(seq[f:], 256).ids
        assert (w.start, w.end) == (f, len(seq))


def test_save_and_load_keep_the_frames(tmp_path):
    KmerTokenizer(3, 3, frames=3).save(tmp_path)
    back = KmerTokenizer.from_folder(tmp_path)
    assert (back.k, back.stride, back.frames) == (3, 3, 3)
    assert KmerTokenizer.from_folder(tmp_path, frames=1).frames == 1
    # a smaller stride override caps the saved frames: frame f must start inside a stride
    assert KmerTokenizer.from_folder(tmp_path, stride=2).frames == 2
    # folders written before frames existed read as one frame
    (tmp_path / "kmer_tokenizer.json").write_text('{"k": 3, "stride": 3}')
    assert KmerTokenizer.from_folder(tmp_path).frames == 1


@pytest.mark.parametrize("k,stride,frames", [(3, 3, 0), (3, 3, 4), (6, 1, 2), (6, 3, -1)])
def test_frames_outside_one_to_stride_are_refused(k, stride, frames, tmp_path):
    with pytest.raises(DataError, match="frames must be between 1 and the stride"):
        KmerTokenizer(k, stride, frames=frames)
    KmerTokenizer(3, 3).save(tmp_path)
    with pytest.raises(DataError, match="frames must be between"):
        KmerTokenizer.from_folder(tmp_path, frames=4)
