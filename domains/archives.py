"""Members of zip, tar and Debian archives, read in memory, with errors for people.

A pinned sha256 already refuses a damaged download; what is left is an archive that is
whole but not laid out as expected (a repackaged release, a file put there by hand).
Each reader names the archive, the member it looked for and what to do, instead of a
stack trace from inside zipfile or tarfile.

A Debian package is an `ar` archive whose `data.tar.*` member holds the installed
files; reading it here (60-byte `ar` headers, then tarfile) needs neither dpkg-deb nor
a Debian machine.
"""
from __future__ import annotations

import io
import lzma
import tarfile
import zipfile
import zlib
from pathlib import Path

from lorakit.errors import DataError


def _fail(error: type[Exception], where: str, what: str) -> Exception:
    return error(f"{where}: {what}; delete the downloaded file and run again (it is fetched "
                 "anew), or put the pinned release there by hand")


def _in_zip(archive: Path | bytes, where: str, error: type[Exception], use):
    source = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    try:
        with zipfile.ZipFile(source) as zf:
            return use(zf)
    except KeyError as err:
        raise _fail(error, where or str(archive), f"has no member {err.args[0]}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
        raise _fail(error, where or str(archive), f"is not a readable zip archive ({err})") \
            from None


def zip_member(archive: Path | bytes, name: str, where: str = "",
               error: type[Exception] = DataError) -> bytes:
    """The bytes of `name` inside a zip (a path or the zip's bytes, `where` naming it)."""
    def read(zf: zipfile.ZipFile) -> bytes:
        if name not in zf.namelist():
            raise KeyError(name)
        return zf.read(name)
    return _in_zip(archive, where, error, read)


def zip_names(archive: Path | bytes, where: str = "",
              error: type[Exception] = DataError) -> list[str]:
    """The member names of a zip."""
    return _in_zip(archive, where, error, lambda zf: zf.namelist())


def tar_member(archive: Path | bytes, name: str, where: str = "",
               error: type[Exception] = DataError) -> bytes:
    """The bytes of `name` inside a tar archive, compressed or not."""
    where = where or str(archive)
    try:
        opened = (tarfile.open(fileobj=io.BytesIO(archive)) if isinstance(archive, bytes)
                  else tarfile.open(archive))
        with opened as tar:
            member = tar.extractfile(name)
            if member is None:
                raise KeyError(name)
            return member.read()
    except KeyError:
        raise _fail(error, where, f"has no member {name}") from None
    except (tarfile.TarError, zlib.error, lzma.LZMAError, OSError, EOFError,
            ValueError) as err:
        reason = str(err).splitlines()[0].rstrip(":")   # tarfile lists every method it tried
        raise _fail(error, where, f"is not a readable tar archive ({reason})") from None


def deb_data(deb: Path, error: type[Exception] = DataError) -> bytes:
    """The `data.tar.*` member of a Debian package: the files it installs, as a tar."""
    try:
        blob = Path(deb).read_bytes()
    except OSError as err:
        raise _fail(error, str(deb), f"cannot be read ({err.strerror})") from None
    if not blob.startswith(b"!<arch>\n"):
        raise _fail(error, str(deb), "is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58])
        except ValueError:
            break
        if name.startswith("data.tar"):
            return blob[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
    raise _fail(error, str(deb), "has no data.tar member (not a Debian binary package)")


def deb_member(deb: Path, name: str, error: type[Exception] = DataError) -> bytes:
    """The bytes of the installed file `name` (e.g. "./usr/share/wordnet/data.noun")."""
    return tar_member(deb_data(deb, error), name, where=f"{deb} (data.tar)", error=error)
