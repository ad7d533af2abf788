"""Finding a dataset's text, and opening it as a `Corpus`.

Lookup order: ``--source PATH``, then ``$LUMENLM_DATA/<dirname>/`` (each of the spec's
folder names), then the download cache (``$LUMENLM_CACHE/<name>/``), then a download
when online. ``$LUMENLM_DATA_URL`` (or ``data_url``) names a mirror that serves
``<base>/<name>/<filename>`` in place of every dataset's public home, so tests can
serve files from a local HTTP server. This is the only place that joins a
`DatasetSpec` to the generic downloader.
"""

from __future__ import annotations

import os
from pathlib import Path

from lumenlm.data import download
from lumenlm.data.corpus import Corpus, DatasetSpec, OpenOptions
from lumenlm.errors import DataError


def data_root() -> Path | None:
    """`$LUMENLM_DATA` if set (the shared folder of local dataset copies)."""
    value = os.environ.get("LUMENLM_DATA")
    return Path(value).expanduser() if value else None


def mirror_for(spec: DatasetSpec, data_url: str | None) -> str | None:
    """`<base>/<dataset>` when a mirror is named (`data_url`, else `$LUMENLM_DATA_URL`)."""
    base = data_url or os.environ.get("LUMENLM_DATA_URL")
    return f"{base.rstrip('/')}/{spec.name}" if base else None


def locate(
    spec: DatasetSpec,
    source: str | os.PathLike[str] | None,
    *,
    offline: bool,
    data_url: str | None,
) -> tuple[Path, str]:
    """Find the folder (or file) holding a dataset's text; download it if allowed.

    Returns the path and its origin: "--source", "$LUMENLM_DATA", "cache" or "download".
    """
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"--source {path} does not exist; pass an existing file or folder")
        return path, "--source"
    root = data_root()
    if root is not None:
        for dirname in spec.dirnames:
            if (root / dirname).is_dir():
                return root / dirname, "$LUMENLM_DATA"
    if not spec.remote:  # the user's own text: nothing to download
        raise DataError(f"dataset {spec.name!r} needs --source PATH ({spec.expected})")
    cached = download.cache_dir() / spec.name
    if download.have_files(spec.remote, cached):
        return cached, "cache"
    where = f"$LUMENLM_DATA/{spec.dirnames[0]}/" if root is None else f"{root / spec.dirnames[0]}/"
    if offline:
        raise DataError(
            f"no local copy of {spec.name} and offline: put {spec.expected} in {where} "
            "or pass --source DIR"
        )
    download.fetch_files(
        spec.remote,
        cached,
        mirror=mirror_for(spec, data_url),
        hint=f"; or put {spec.expected} in {where}",
    )
    return cached, "download"


def open_corpus(
    spec: DatasetSpec, root: Path, origin: str, options: OpenOptions, *, seed: int = 0
) -> Corpus:
    """Build the `Corpus` for a located dataset (no text is read yet, except line counts)."""
    corpus = spec.build(root, options)
    corpus.origin = origin
    corpus.carve_seed = seed
    corpus.val_ratio, corpus.test_ratio = options.val_ratio, options.test_ratio
    corpus.known_sha256 = dict(spec.known_sha256)
    if origin in ("cache", "download"):
        corpus.urls = [r.url for r in spec.remote]
    return corpus
