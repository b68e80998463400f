"""Annotation: corpus -> token ids -> packed rows -> both models' log-probs -> ReMiT weights -> shards.

- Job: `config` (the flags), `plan`, `worker`, `finalize`, `launch`, `repair`; the work folder's layout
  in `workdir`, whether a run may continue in it in `claim`.
- Input: `inputs` (readers), `tokenize`, `packing`; `units` runs them for `plan` and `pack`.
- `engines/`: the scoring engines; all vLLM imports live in `engines.vllm`.
- `inspect/`: stats and the HTML page over a finished output; `verify` re-scores a sample.

Importing this package loads no engine.
"""
