"""Run the trainer and record what each rank did (launched by the tests, with torchrun or as one plain
process). Usage: dp_worker.py DATA SAVE RECORD_PREFIX TP [key=value ...]

Keys are TrainConfig fields, plus the worker's own:
  probe=1     record, per rank, what proves a parallelism or memory flag is in effect: the global names
              of the parameters this rank holds, the step-1 gradients (before clipping), the forward
              calls of the transformer layers and core attentions from step 2 on, the sequence length
              entering the layers, the Adam state held by this rank, and whether gradient reduction
              started during the backward pass (from step 2 on);
  inject=N    at step N, after the backward pass, write +inf into one gradient (a fault hook), and record
              the guard's error and whether any weight changed.

Writes RECORD_PREFIX.rankR.json (sample ids per step, the shards this rank read and validated, per
output folder, probes) and RECORD_PREFIX.rankR.pt (gradients).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import torch

from remit.train import dataset as dataset_module
from remit.train.config import TrainConfig
from remit.train.guard import NonFiniteStepError
from remit.train.parallel import global_name, unwrap
from remit.train.trainer import train

DEFAULTS = {
    "weights": "online",
    "train_iters": 6,
    "micro_batch_size": 2,
    "global_batch_size": 4,
    "lr": 1e-3,
    "lr_warmup_iters": 2,
    "seed": 7,
    "shuffle_shards": 2,
}


def _value(v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _count_core_attention(probe: dict, model) -> None:
    """Count calls of the core-attention class the layer spec built (once the model exists: step 1)."""
    layers = getattr(model.decoder, "layers", [])
    if not layers or "core_attention_class" in probe:
        return
    cls = type(layers[0].self_attention.core_attention)
    probe["core_attention_class"] = cls.__name__
    forward = cls.forward

    def counted(self, *args, **kwargs):
        probe["calls"]["core_attention"] += 1
        return forward(self, *args, **kwargs)

    cls.forward = counted


def _install_probes(probe: dict) -> None:
    """Count forward calls and watch gradient reduction by wrapping mcore's own classes in this process."""
    from megatron.core.distributed.param_and_grad_buffer import _ParamAndGradBucketGroup
    from megatron.core.transformer.transformer_layer import TransformerLayer

    calls: Counter = Counter()
    probe["calls"] = calls
    probe["layer_seq"] = []
    probe["sync_starts"] = {"in_backward": 0, "at_finish": 0}
    finishing = [False]

    layer_forward = TransformerLayer.forward
    start_sync, finish_sync = _ParamAndGradBucketGroup.start_grad_sync, _ParamAndGradBucketGroup.finish_grad_sync

    def counted_layer(self, *args, **kwargs):
        calls["layer"] += 1
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        probe["layer_seq"].append(int(hidden.shape[0]))
        return layer_forward(self, *args, **kwargs)

    def watched_start(self, *args, **kwargs):
        probe["sync_starts"]["at_finish" if finishing[0] else "in_backward"] += 1
        return start_sync(self, *args, **kwargs)

    def watched_finish(self, *args, **kwargs):
        finishing[0] = True
        try:
            return finish_sync(self, *args, **kwargs)
        finally:
            finishing[0] = False

    TransformerLayer.forward = counted_layer
    _ParamAndGradBucketGroup.start_grad_sync = watched_start
    _ParamAndGradBucketGroup.finish_grad_sync = watched_finish


def _record_datasets() -> list:
    """Every RemitDataset this process opens, to report which shards each read and validated."""
    opened: list = []
    init = dataset_module.RemitDataset.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    dataset_module.RemitDataset.__init__ = recording_init  # type: ignore[method-assign]
    return opened


def main() -> None:
    data, save, record, tp, *extra = sys.argv[1:]
    opened = _record_datasets()
    opts = dict(DEFAULTS)
    for kv in extra:
        k, v = kv.split("=", 1)
        opts[k] = _value(v)
    probe_on = bool(opts.pop("probe", False))
    inject = opts.pop("inject", None)
    seen: dict[int, list[int]] = {}
    probe: dict = {}
    grads: dict[str, torch.Tensor] = {}
    snapshot: dict[str, torch.Tensor] = {}
    live: dict[str, torch.Tensor] = {}
    if probe_on:
        _install_probes(probe)

    def observer(step, ids, _record):
        seen[step] = [int(i) for i in ids]

    def before_step(step, engine):
        model = unwrap(engine.model)
        names = {global_name(n, engine.layout.layer_offset): p for n, p in model.named_parameters()}
        if probe_on:
            _count_core_attention(probe, model)
            if step == 1:
                # Count from step 2 on: core attention is hooked only now, and with overlap_grad_reduce
                # mcore's first step learns the order in which gradients become ready (it reduces at the end).
                probe["calls"].clear()
                probe["sync_starts"].update(in_backward=0, at_finish=0)
            probe["params"] = sorted(names)
            probe["layout"] = {k: getattr(engine.layout, k) for k in ("tp_rank", "pp_rank", "dp_rank", "layer_offset")}
            if step == 1:
                grads.update({n: p.main_grad.detach().float().cpu().clone() for n, p in names.items()})
            if step == 2:  # Adam state exists after one step
                opts_ = getattr(engine.optimizer, "chained_optimizers", [engine.optimizer])
                probe["optimizer"] = type(opts_[0]).__name__
                probe["adam_state_numel"] = sum(
                    int(st["exp_avg"].numel()) for o in opts_ for st in o.optimizer.state.values() if "exp_avg" in st
                )
                probe["model_numel"] = sum(p.numel() for p in model.parameters())
        if inject is not None and step == int(inject):
            live.update(names)
            snapshot.update({n: p.detach().clone() for n, p in names.items()})
            first = next(p for p in names.values() if p.main_grad is not None)
            first.main_grad.view(-1)[0] = float("inf")

    cfg = TrainConfig(data=data, save=save, tensor_model_parallel_size=int(tp), **opts)
    out: dict = {}
    try:
        train(cfg, observer=observer, before_step=before_step)
    except NonFiniteStepError as e:
        out["error"] = str(e)
        # the weights the failing step saw, compared after the error: nothing may have moved
        out["weights_unchanged"] = bool(snapshot) and all(torch.equal(live[n], t) for n, t in snapshot.items())
    rank = int(os.environ.get("RANK", "0"))
    out["ids"] = seen
    out["shards"] = {
        str(d.output.root): {"read": sorted(set(d.shard_reads)), "validated": sorted(d.shards_validated)}
        for d in opened
    }
    if probe_on:
        out.update(
            {k: (dict(v) if isinstance(v, Counter) else v) for k, v in probe.items()},
        )
        torch.save(grads, f"{record}.rank{rank}.pt")
    with open(f"{record}.rank{rank}.json", "w") as f:
        json.dump(out, f)


if __name__ == "__main__":  # dist_checkpointing's writer re-imports __main__
    main()
