import pytest

from lorakit import DataError
from lorakit.domains.text import sentiment as sent

from .standins import tar_bytes


def hutto_sdist(rows_per_domain: dict[str, list[str]]) -> bytes:
    """An sdist in the vaderSentiment 3.3.2 layout: the tar.gz inside a tar.gz."""
    inner = tar_bytes({f"hutto_ICWSM_2014/{stem}_GroundTruth.txt":
                       "\r\n".join(rows_per_domain.get(domain, [])).encode()
                       for domain, stem in sent.DOMAINS.items()})
    return tar_bytes({sent.INNER: inner, "vaderSentiment-3.3.2/setup.py": b""})


def ratings(n: int, start: float = -3.0, step: float = 0.25) -> list[str]:
    return [f"{i}\t{start + i * step}\tsentence number {i} &amp; more" for i in range(n)]


def test_label_rule_keeps_half_a_point_either_side_and_drops_the_middle():
    assert [sent.label(m) for m in (-4, -0.5, -0.49, 0.0, 0.49, 0.5, 3.9)] == \
        [0, 0, None, None, None, 1, 1]
    assert sent.label(0.7, threshold=1.0) is None


def test_parse_ratings_reads_the_ground_truth_format_and_unescapes_html():
    rows = sent.parse_ratings("1\t2.5\tYay &amp; good.\r\n\r\n2_3\t-0.15\tmeh\r\n", "f")
    assert rows == [("Yay & good.", 2.5), ("meh", -0.15)]


def test_parse_ratings_names_file_and_line_of_a_bad_row():
    with pytest.raises(DataError, match=r"f, line 2: expected `id<TAB>mean rating<TAB>text`"):
        sent.parse_ratings("1\t2.5\tok\n2\tnot-a-number\tbad\n", "f")


def test_labelled_drops_neutral_and_repeated_texts():
    rows = [("good", 1.2), ("fine", 0.2), ("bad", -2.0), ("good", 1.5), ("worse", -0.5)]
    assert sent.labelled(rows) == [("good", 1), ("bad", 0), ("worse", 0)]


def test_sentiment_reads_four_domains_and_splits_70_10_20_stratified(pinned, cache):
    sdist = hutto_sdist({"movies": ratings(25), "tweets": ratings(10), "amazon": ratings(5),
                         "nyt": ratings(3)})
    pinned(sent, "SDIST", sdist)
    data = sent.sentiment(cache)
    assert list(data) == ["movies", "tweets", "amazon", "nyt"]
    # 25 ratings from -3.0 in steps of 0.25: 11 are ≤ -0.5, 3 neutral, 11 are ≥ 0.5
    movies = data["movies"]
    assert {k: len(v) for k, v in movies.items()} == {"train": 16, "val": 2, "test": 4}
    every = [x for v in movies.values() for x in v]
    assert sum(y for _, y in every) == 11 and len(every) == 22
    assert sum(y for _, y in movies["test"]) == 2        # round(0.2 * 11) of each class
    assert every[0][0].endswith("& more")
    assert sent.sentiment(cache) == data                 # fixed by the seed
    assert sent.sentiment(cache, seed=1)["movies"]["test"] != movies["test"]


def test_sentiment_refuses_a_download_with_another_sha256(pinned, cache):
    pinned(sent, "SDIST", hutto_sdist({}), sha="0" * 64)
    with pytest.raises(DataError, match=r"vaderSentiment-3.3.2.tar.gz has sha256 [0-9a-f]{64}, "
                       r"the pinned one is 0{64}: .* delete it and run again"):
        sent.sentiment(cache)


def test_sentiment_names_the_archive_that_is_not_a_tar(pinned, cache):
    pinned(sent, "SDIST", b"this is not a tar.gz")
    with pytest.raises(DataError, match=r"vaderSentiment-3.3.2.tar.gz: is not a readable tar "
                       r"archive .*delete the downloaded file"):
        sent.sentiment(cache)


def test_sentiment_names_the_missing_member(pinned, cache):
    pinned(sent, "SDIST", tar_bytes({"vaderSentiment-3.3.2/setup.py": b""}))
    with pytest.raises(DataError, match=r"has no member .*hutto_ICWSM_2014.tar.gz"):
        sent.sentiment(cache)
    inner_without_tweets = tar_bytes({sent.INNER: tar_bytes({
        "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": b"1\t1.0\tok"})})
    pinned(sent, "SDIST", inner_without_tweets)
    with pytest.raises(DataError, match=r"hutto_ICWSM_2014.tar.gz: has no member "
                       r"hutto_ICWSM_2014/tweets_GroundTruth.txt"):
        sent.sentiment(cache)
