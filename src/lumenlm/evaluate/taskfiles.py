"""Finding benchmark files: a local copy first, else a verified download into the cache.

The parsers in `lumenlm.evaluate.tasks` only read a path; this module decides which
path. Lookup order: ``--tasks-dir``, then ``$LUMENLM_DATA`` (each root may hold the
files directly or under the task's subfolder, ``arc/`` or ``hellaswag/``), then the
download cache, then a download.

Sources (official): HellaSwag `hellaswag_val.jsonl` from rowanz/hellaswag on GitHub;
ARC from AI2's `ARC-V1-Feb2018.zip` (about 680 MB, as it bundles the ARC corpus; the six
question files are extracted and the zip is deleted). ``$LUMENLM_TASKS_URL`` (else
``$LUMENLM_DATA_URL``) names a mirror serving the tasks-dir layout,
``<base>/arc/ARC-Easy-Test.jsonl`` and ``<base>/hellaswag/hellaswag_val.jsonl``, which
also skips the zip. Files land in ``$LUMENLM_CACHE/tasks/<subdir>/`` (default
``~/.cache/lumenlm``), are written atomically, and are checked against the official
SHA-256 where known. Offline, the one-line error says where to put the files instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from lumenlm.data.download import cache_dir, download, extract_members
from lumenlm.errors import DataError
from lumenlm.evaluate.tasks import MCItem, TaskSpec, get_task

TASKS_URL_ENV = "LUMENLM_TASKS_URL"
ARC_ZIP_URL = "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip"
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
ARC_FILES = tuple(
    f"ARC-{level}-{split}.jsonl"
    for level in ("Easy", "Challenge")
    for split in ("Train", "Dev", "Test")
)

# Official digests and sizes (see ../shared/data/*/SOURCE.md); other bytes are refused.
KNOWN = {
    "ARC-Easy-Test.jsonl": (
        "ce32a0774b4beb1977d2c6b16dda5dd2b24fdc9c7f506882c452678676bd09be",
        895_104,
    ),
    "ARC-Challenge-Test.jsonl": (
        "9fa8ffb3e3a1f88cb302d53dd95aae81e39209ad9bcf974376b319d8fd35717c",
        492_726,
    ),
    "hellaswag_val.jsonl": (
        "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
        12_246_618,
    ),
}


# ----------------------------------------------------------------------------- local copies


def candidate_roots(tasks_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for task files, in order: --tasks-dir, then $LUMENLM_DATA."""
    roots = []
    if tasks_dir is not None:
        roots.append(Path(tasks_dir))
    env = os.environ.get("LUMENLM_DATA")
    if env:
        roots.append(Path(env))
    return roots


def find_task_file(name: str, tasks_dir: str | Path | None = None) -> Path | None:
    """The first existing file for task `name` under the candidate roots.

    Each root may hold the files directly or in the task's subfolder (``arc/``,
    ``hellaswag/``), the layout of the shared data folder and of the download cache.
    """
    spec = get_task(name)
    for filename in spec.filenames:
        for root in candidate_roots(tasks_dir):
            for cand in (root / spec.subdir / filename, root / filename):
                if cand.is_file():
                    return cand
    return None


def missing_message(spec: TaskSpec) -> str:
    """The one-line error for a task with no local copy: where to put the file."""
    return (
        f"no local copy of {spec.name} ({' or '.join(spec.filenames)}); put it in "
        f"--tasks-dir DIR (or DIR/{spec.subdir}/) or in $LUMENLM_DATA/{spec.subdir}/"
    )


# ----------------------------------------------------------------------------- loading


def load_task(
    name: str,
    tasks_dir: str | Path | None = None,
    limit: int | None = None,
    download: bool = True,
) -> list[MCItem]:
    """Items of task `name`, the first `limit` of them, from local files or a download."""
    return load_task_with_source(name, tasks_dir, limit, download)[0]


def load_task_with_source(
    name: str,
    tasks_dir: str | Path | None = None,
    limit: int | None = None,
    download: bool = True,
) -> tuple[list[MCItem], Path]:
    """`load_task`, also returning the file the items came from."""
    spec = get_task(name)
    path = find_task_file(spec.name, tasks_dir)
    if path is None:
        if not download:
            raise DataError(missing_message(spec))
        path = download_task_file(spec)
    items = spec.loader(path)
    return (items[:limit] if limit is not None else items), path


# ----------------------------------------------------------------------------- downloads


def tasks_cache_dir() -> Path:
    """Where downloaded task files are kept: ``<lumenlm cache>/tasks``."""
    return cache_dir() / "tasks"


def download_task_file(spec: TaskSpec, timeout: float = 60.0) -> Path:
    """Download (or reuse from the cache) the first file of `spec`; return its path."""
    filename = spec.filenames[0]
    dest = tasks_cache_dir() / spec.subdir / filename
    sha, size = KNOWN.get(filename, (None, None))
    if dest.is_file():
        return dest
    base = os.environ.get(TASKS_URL_ENV) or os.environ.get("LUMENLM_DATA_URL")
    try:
        if base:
            download(
                f"{base.rstrip('/')}/{spec.subdir}/{filename}",
                dest,
                sha256=sha,
                size=size,
                timeout=timeout,
            )
        elif spec.subdir == "arc":
            _fetch_arc_zip(dest.parent, timeout)
        else:
            download(HELLASWAG_URL, dest, sha256=sha, size=size, timeout=timeout)
    except DataError as exc:
        raise DataError(f"{missing_message(spec)} (download failed: {exc})") from None
    return dest


def _fetch_arc_zip(out_dir: Path, timeout: float) -> None:
    """Download AI2's ARC zip, keep only the six question files (test files checked)."""
    zip_path = download(ARC_ZIP_URL, out_dir / "ARC-V1-Feb2018.zip", timeout=timeout)
    try:
        extract_members(
            zip_path,
            out_dir,
            lambda member: Path(member).name if Path(member).name in ARC_FILES else None,
            {name: sha for name, (sha, _) in KNOWN.items() if sha},
        )
    finally:
        zip_path.unlink(missing_ok=True)
