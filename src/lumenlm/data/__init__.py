"""The data pipeline: sources, cleaning, splits, tokenizer, token files, training datasets.

Modules, one job each:
  sources   dataset registry, locating local copies, partial pieces
  download  resumable, checksummed HTTP downloads into a cache
  readers   file layouts -> documents (streaming)
  clean     Unicode/whitespace/control-character cleaning, exact de-duplication
  split     deterministic split assignment and subsampling by document hash
  tokenizer byte-level BPE: train, load, save, encode, decode, special ids
  encode    batched parallel encoding into flat token arrays
  tokens    .bin token files and meta.json (`load_split`, `read_meta`)
  windows   fixed-window and document-packed datasets, resumable epoch sampler
  prepare   `prepare_dataset`, which runs all of the above

Importing this package is cheap; import the submodules you need.
"""
