"""The dataset registry: every corpus `lumenlm prepare` knows, one module each.

A dataset module defines ``SPEC = DatasetSpec(...)`` (see `lumenlm.data.corpus`): its
name, a ``build(root, options) -> Corpus`` function that maps its files to splits, the
folder names looked for under ``$LUMENLM_DATA``, the files to download (if any) and its
default settings. To add a dataset, add its module here and one line to `SPECS`;
`prepare`, the CLI's choices and its help all read this registry. Modules whose name
starts with ``_`` hold layouts that several datasets share.
"""

from __future__ import annotations

from lumenlm.data.corpus import DatasetSpec
from lumenlm.data.datasets import text, tinyshakespeare, tinystories, wikitext2, wikitext103
from lumenlm.errors import DataError


def _registry(*specs: DatasetSpec) -> dict[str, DatasetSpec]:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):  # a programming error, caught by the tests
        raise ValueError(f"dataset names must be unique, got {names}")
    return {s.name: s for s in specs}


SPECS: dict[str, DatasetSpec] = _registry(
    wikitext2.SPEC,
    wikitext103.SPEC,
    tinystories.SPEC,
    tinyshakespeare.SPEC,
    text.SPEC,
)
DATASETS = tuple(SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset `name`, or a one-line error listing the choices."""
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name]
