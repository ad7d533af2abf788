"""The data pipeline: sources, cleaning, splits, tokenizer, token files, training datasets.

Modules, one job each:
  datasets  the dataset registry: one module per corpus (`SPEC`), listed in one place
  corpus    what a dataset is to `prepare`: `DatasetSpec`, `Corpus`, split routes
  locate    finding a dataset's text (--source, $LUMENLM_DATA, cache, download)
  download  resumable, checksummed HTTP downloads into a cache (knows no datasets)
  readers   file layouts -> documents (streaming)
  clean     Unicode/whitespace/control-character cleaning, exact de-duplication
  split     deterministic split assignment and subsampling by document hash
  documents the cleaned, subsampled, de-duplicated document stream `prepare` encodes
  tokenizer byte-level BPE: train, load, save, encode, decode, special ids
  encode    batched parallel encoding into flat token arrays
  tokens    .bin token files and meta.json (`load_split`, `read_meta`, `check_ids`)
  chat_template  chat messages -> prompt text (`ChatTemplate`), history fitting
  windows   fixed-window and document-packed datasets, the per-epoch shuffle
  prepare   `prepare_dataset`, which runs all of the above

Importing this package is cheap; import the submodules you need.
"""
