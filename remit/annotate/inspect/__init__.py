"""Inspection of a finished output: it only reads shards, through the DuckDB views of `remit.shards.views`.

- `stats`: weight statistics as text tables or JSON (`remit-annotate stats`).
- `show`: one self-contained HTML page of tokens coloured by weight (`remit-annotate show`).
- `tokens`: token ids to text, with the tokenizer the output was scored with.
- `guard`: runs a command with DuckDB present, turning expected failures into one-line errors.

DuckDB, matplotlib and transformers are imported inside the functions that use them.
"""
