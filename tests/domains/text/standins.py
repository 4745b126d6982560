"""Stand-in archives in the layouts of the real downloads, built in memory."""
import io
import tarfile


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def deb_bytes(files: dict[str, bytes]) -> bytes:
    """A Debian package (ar: debian-binary, control.tar.xz, data.tar.xz) holding `files`."""
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_bytes({}, "w:xz")),
               ("data.tar.xz", tar_bytes(files, "w:xz"))]
    out = b"!<arch>\n"
    for name, data in members:
        header = (f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n")
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return out
