"""HTTP downloads into a local cache: resumable (Range), checksummed, atomic.

A file is fetched to `NAME.part` next to its final place; an interrupted download
resumes from the bytes already there with a `Range` request, and only a complete
file whose size and sha256 match is renamed to its final name. The cache lives in
`$LUMENLM_CACHE` or `~/.cache/lumenlm`.

This module knows URLs, files and zips, nothing about datasets or benchmarks: callers
describe what to fetch with `RemoteFile` (or call `download` directly) and decide
where it goes, so both `lumenlm.data.datasets` and `lumenlm.evaluate` build on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lumenlm.errors import DataError

CHUNK = 1 << 20
USER_AGENT = "lumenlm-data/1 (+https://github.com/)"


@dataclass(frozen=True)
class RemoteFile:
    """A file at a public URL, checked against `sha256`/`size` where they are known.

    When `members` is set the file is a zip: those members (member path -> local
    name) are extracted next to it, each checked against `member_sha256[local]`.
    """

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    members: dict[str, str] = field(default_factory=dict)
    member_sha256: dict[str, str] = field(default_factory=dict)


def cache_dir() -> Path:
    """Where downloads are kept: `$LUMENLM_CACHE` or `~/.cache/lumenlm`."""
    value = os.environ.get("LUMENLM_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lumenlm"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` unless a verified copy is already there; resume a `.part` file.

    Raises `DataError` (one line) when the server cannot be reached, or when the
    finished file's size or sha256 is wrong (the bad file is removed).
    """
    dest = Path(dest)
    if dest.is_file() and _verified(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is None or have < size:
        _fetch(url, part, have, timeout, progress)
    if not _verified(part, sha256, size):
        actual = sha256_file(part)
        got = part.stat().st_size
        part.unlink()
        raise DataError(
            f"download of {url} is corrupt ({got} bytes, sha256 {actual[:12]}..., expected "
            f"{size if size is not None else '?'} bytes, sha256 {(sha256 or '?')[:12]}...); "
            "it was removed, run the command again"
        )
    os.replace(part, dest)
    return dest


def _verified(path: Path, sha256: str | None, size: int | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_file(path) == sha256


def _fetch(url: str, part: Path, have: int, timeout: float, progress: bool) -> None:
    """Append the bytes of `url` from offset `have` to `part` (restart if Range is ignored)."""
    import http.client  # here, not at the top: importing the registry stays cheap
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status = resp.status
            if have and status != 206:
                have = 0  # server ignored the Range header: start over
            total = resp.headers.get("Content-Length")
            total_bytes = int(total) + have if total is not None else None
            mode = "ab" if have else "wb"
            with (
                open(part, mode) as out,
                tqdm(
                    total=total_bytes,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {part.name[:-5]}",
                    disable=None if progress else True,
                ) as bar,
            ):
                received = 0
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received < int(total):
                # urllib returns a short body without raising when the connection drops
                raise ConnectionError(f"connection closed after {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # nothing left to fetch: the .part is already complete
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
        kept = part.is_file() and part.stat().st_size > 0
        resume = "; the partial file is kept and the next run resumes it" if kept else ""
        raise DataError(f"could not download {url} ({reason}){resume}") from None


def local_names(remote: RemoteFile) -> list[str]:
    """The files `remote` leaves in its folder: its extracted members, else itself."""
    return list(remote.members.values()) or [remote.filename]


def have_files(files: Sequence[RemoteFile], folder: Path) -> bool:
    """True when every file that `files` download (or extract) is present in `folder`."""
    if not files or not folder.is_dir():
        return False
    return all((folder / n).is_file() for remote in files for n in local_names(remote))


def fetch_files(
    files: Sequence[RemoteFile], folder: Path, *, mirror: str | None = None, hint: str = ""
) -> Path:
    """Download (and unzip) `files` into `folder`; returns `folder`.

    `mirror` is a base URL that serves every file by its `filename` (`<mirror>/<filename>`)
    instead of its own `url`: a local copy, or a test server. `hint` is appended to the
    message of a download that fails (e.g. where a local copy could go instead).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for remote in files:
        url = f"{mirror.rstrip('/')}/{remote.filename}" if mirror else remote.url
        try:
            path = download(url, folder / remote.filename, sha256=remote.sha256, size=remote.size)
        except DataError as exc:
            if not hint:
                raise
            raise DataError(f"{exc}{hint}") from None
        if remote.members:
            _extract(path, folder, remote)
    return folder


def _extract(archive: Path, folder: Path, remote: RemoteFile) -> None:
    """Extract the named members of a zip, each atomically, and check their sha256."""
    found = extract_members(archive, folder, remote.members.get, remote.member_sha256)
    missing = sorted(set(remote.members.values()) - set(found))
    if missing:
        raise DataError(
            f"{archive} is not the expected zip (no {', '.join(missing)}); delete it and run again"
        )


def extract_members(
    archive: Path,
    folder: Path,
    pick: Callable[[str], str | None],
    sha256: Mapping[str, str],
) -> list[str]:
    """Extract each zip member that `pick(member_name)` maps to a local file name into
    `folder`, atomically, checking `sha256[local]` where given. Returns the local names."""
    import zipfile

    written: list[str] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                local = pick(member)
                if local is None:
                    continue
                target = folder / local
                tmp = target.with_name(target.name + ".part")
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                expected = sha256.get(local)
                if expected and sha256_file(tmp) != expected:
                    tmp.unlink()
                    raise DataError(
                        f"{local} extracted from {archive.name} has the wrong sha256; "
                        f"delete {archive} and run again"
                    )
                os.replace(tmp, target)
                written.append(local)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{archive} is not the expected zip ({exc}); delete it and run again"
        ) from None
    return written
