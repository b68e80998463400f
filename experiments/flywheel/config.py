"""The experiment's configuration: one dataclass, a full and a quick preset, and the arms.

The full preset was fixed from pilot runs that looked only at the dev split (see README.md); the
held-out splits were evaluated once, in the reported run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.flywheel.data import DataConfig
from experiments.flywheel.grpo import GRPOConfig
from experiments.flywheel.models import ModelShape
from remit.common.atomic import write_json_atomic

#: remit-train flags of each mid-training arm. The first five are the experiment; then the controls of the
#: confirmatory study (docs/results.md) and the ablations.
ARMS: dict[str, list[str]] = {
    "none": ["--weights", "none"],
    "static": ["--weights", "static"],
    "online": ["--weights", "online"],
    "shuffled": ["--weights", "shuffled"],
    "rho1": ["--weights", "rho1", "--keep-ratio", "0.6"],
    "online-sft": ["--weights", "online"],
    "oracle": ["--weights", "external"],
    "clean-none": ["--weights", "none"],
    "clean-online": ["--weights", "online"],
    "clean-shuffled": ["--weights", "shuffled"],
    "online-eps0.5": ["--weights", "online", "--eps", "0.5"],
    "rho1-keep0.8": ["--weights", "rho1", "--keep-ratio", "0.8"],
}
MAIN_ARMS = ("none", "static", "online", "shuffled", "rho1")
#: The annotation each arm trains on (default: "annotated", base + RL model on the annealing split):
#: "annotated-sft" is scored with the SFT reference in place of the RL model, "annotated-clean" is the
#: clean annealing split scored with base + RL. The oracle reads external weights beside "annotated".
ARM_DATA: dict[str, str] = {
    "online-sft": "annotated-sft",
    "clean-none": "annotated-clean",
    "clean-online": "annotated-clean",
    "clean-shuffled": "annotated-clean",
}
#: Folder of the oracle's external weights (experiments/flywheel/oracle.py), beside "annotated".
ORACLE_WEIGHTS = "oracle-weights"


def arm_data(arm: str) -> str:
    """The annotation folder (under the output folder) that `arm` trains on."""
    return ARM_DATA.get(arm, "annotated")


@dataclass(frozen=True)
class TrainRecipe:
    """One remit-train run's schedule (equal for every arm of a stage)."""

    iters: int
    micro_batch: int
    global_batch: int
    lr: float
    min_lr: float
    warmup: int
    saves: int = 1
    """Checkpoints along the run (evaluated for the curves); the last is at `iters`."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run depends on; `config.json` in the output folder records it."""

    data: DataConfig = field(default_factory=DataConfig)
    shape: ModelShape = field(default_factory=ModelShape)
    seq_len: int = 256
    """Tokens per packed row (pre-training and annealing)."""
    rows_per_shard: int = 512
    pretrain: TrainRecipe = TrainRecipe(
        iters=500, micro_batch=16, global_batch=16, lr=3e-3, min_lr=3e-3, warmup=20, saves=5
    )
    """From random weights: 500 x 16 rows of 256 tokens, warm-up then a constant learning rate (the stable
    phase of a warm-up-stable-decay schedule: mid-training is the decay)."""
    mid: TrainRecipe = TrainRecipe(iters=80, micro_batch=8, global_batch=8, lr=3e-3, min_lr=0.0, warmup=4, saves=4)
    """Every arm: 80 x 8 rows of 256 tokens of the annealing split (about a third of an epoch), a
    checkpoint every 20 steps (the accuracy curve)."""
    rl: GRPOConfig = field(default_factory=GRPOConfig)
    base_seed: int = 0
    """Seed of pre-training (initialisation, data order) and of the first RL turn: another value
    replicates the experiment with another base and RL model on the same data."""
    eps: float = 0.2
    """The annotation's clip half-width (static, shuffled; online uses it unless an arm overrides it)."""
    arms: tuple[str, ...] = MAIN_ARMS
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    post_rl_arms: tuple[str, ...] = ("none", "online")
    post_rl_seeds: tuple[int, ...] = (1, 2)
    eval_limit: int = 0
    """Accuracy on the first N problems of each evaluation split (0: all); the loss always uses all."""
    max_new_tokens: int = 40
    """Greedy decoding budget (a 4-step solution is 30 tokens with its EOS)."""
    engine: str = "vllm"
    """remit-annotate's scoring engine."""
    rl_engine: str = "own"
    """'own' (experiments/flywheel/grpo.py) or 'trl' (TRL's GRPOTrainer, the flywheel-trl extra)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = ExperimentConfig()

#: Tiny sizes, one seed: a smoke test of every stage and arm in a few minutes. Pre-training is long enough
#: for the model to state an answer and sometimes the right one, so that GRPO's rewards differ within a
#: group and the RL model moves away from the base: the annotation's weights are not all 1 and every
#: weighted arm trains differently from `none` (test_quick_mode_runs_every_stage checks both).
QUICK = ExperimentConfig(
    data=DataConfig(pretrain=2000, anneal=160, rl=64, dev=16, heldout=16, heldout_templates=16, heldout_confirm=16),
    shape=ModelShape(hidden=64, layers=2, heads=2, kv_heads=1, ffn=192, max_positions=256),
    seq_len=128,
    rows_per_shard=64,
    pretrain=TrainRecipe(iters=150, micro_batch=8, global_batch=8, lr=2e-3, min_lr=2e-3, warmup=2),
    mid=TrainRecipe(iters=4, micro_batch=4, global_batch=8, lr=5e-4, min_lr=0.0, warmup=1, saves=2),
    rl=GRPOConfig(steps=4, prompts_per_step=8, group_size=8, lr=5e-4, max_new_tokens=40, warmup=1),
    arms=(*MAIN_ARMS, "online-sft", "oracle", "clean-online"),  # every path: each annotation, external weights
    seeds=(1,),
    post_rl_arms=("online",),
    post_rl_seeds=(1,),
    eval_limit=16,
    max_new_tokens=40,
    # The smoke test scores with remit-annotate's hf engine: two vLLM engines take longer to start than the
    # rest of the quick run. The full run (and remit's own tests) exercise the vllm engine.
    engine="hf",
)


#: The file in an output folder that records the run's configuration.
CONFIG_FILE = "config.json"

#: Fields that choose which runs to make, not how: a rerun with the same output folder may change them.
SELECTION_FIELDS = ("arms", "seeds", "post_rl_arms", "post_rl_seeds")


def _like(current: Any, value: Any, what: str) -> Any:
    """`value` as the type of `current` (a float field takes an int; a tuple takes a list, or one element,
    of the type of its elements); ValueError naming `what` otherwise."""
    if isinstance(current, tuple):
        items = value if isinstance(value, list) else [value]
        return tuple(_like(current[0], v, what) for v in items) if current else tuple(items)
    if type(current) is float and type(value) is int:
        return float(value)
    if type(value) is not type(current):
        raise ValueError(f"{what}: expected a {type(current).__name__} like {json.dumps(current)}")
    return value


def set_field(cfg: ExperimentConfig, assignment: str) -> ExperimentConfig:
    """`cfg` with one field changed by "dotted.key=value" (the value is JSON; a bare word is a string),
    e.g. "data.noise_rate=0.5", "mid.iters=160", "shape.hidden=192", "eps=0.5". Raises ValueError
    naming the key or value and the choices."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. data.noise_rate=0.5")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text

    def put(obj: Any, path: list[str], where: str) -> Any:
        name = path[0]
        names = [f.name for f in dataclasses.fields(obj)]
        if name not in names:
            raise ValueError(
                f"--set {key}: {where or 'the configuration'} has no field {name!r}; fields: {', '.join(names)}"
            )
        current = getattr(obj, name)
        if len(path) > 1:
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"--set {key}: {name!r} has no sub-fields")
            return replace(obj, **{name: put(current, path[1:], f"{where}.{name}".lstrip("."))})
        if dataclasses.is_dataclass(current):
            raise ValueError(
                f"--set {key}: give one of its fields, e.g. {key}.{dataclasses.fields(current)[0].name}=..."
            )
        return replace(obj, **{name: _like(current, value, f"--set {key}={text}")})

    return put(cfg, key.split("."), "")


def check(cfg: ExperimentConfig) -> None:
    """Raise ValueError naming the first field whose value no stage can run with (e.g. `mid.iters = 0`), so
    that a bad `--set` is refused before any stage starts. DataConfig checks its own fields."""
    problems: list[tuple[str, Any, str]] = []

    def need(ok: bool, name: str, value: Any, requirement: str) -> None:
        if not ok:
            problems.append((name, value, requirement))

    s = cfg.shape
    for name in ("hidden", "layers", "heads", "kv_heads", "ffn"):
        need(getattr(s, name) >= 1, f"shape.{name}", getattr(s, name), "at least 1")
    need(s.heads >= 1 and s.hidden % s.heads == 0, "shape.hidden", s.hidden, f"a multiple of shape.heads ({s.heads})")
    need(
        s.kv_heads >= 1 and s.heads % s.kv_heads == 0,
        "shape.heads",
        s.heads,
        f"a multiple of shape.kv_heads ({s.kv_heads})",
    )
    need(cfg.seq_len >= 2, "seq_len", cfg.seq_len, "at least 2")
    need(s.max_positions >= cfg.seq_len, "shape.max_positions", s.max_positions, f"at least seq_len ({cfg.seq_len})")
    need(cfg.rows_per_shard >= 1, "rows_per_shard", cfg.rows_per_shard, "at least 1")
    for stage in ("pretrain", "mid"):
        r: TrainRecipe = getattr(cfg, stage)
        need(r.iters >= 1, f"{stage}.iters", r.iters, "at least 1")
        need(r.micro_batch >= 1, f"{stage}.micro_batch", r.micro_batch, "at least 1")
        need(
            r.micro_batch >= 1 and r.global_batch >= r.micro_batch and r.global_batch % r.micro_batch == 0,
            f"{stage}.global_batch",
            r.global_batch,
            f"a multiple of {stage}.micro_batch ({r.micro_batch})",
        )
        need(r.lr > 0, f"{stage}.lr", r.lr, "above 0")
        need(0 <= r.min_lr <= r.lr, f"{stage}.min_lr", r.min_lr, f"between 0 and {stage}.lr ({r.lr})")
        need(0 <= r.warmup < r.iters, f"{stage}.warmup", r.warmup, f"0 or more and below {stage}.iters ({r.iters})")
        need(1 <= r.saves <= r.iters, f"{stage}.saves", r.saves, f"between 1 and {stage}.iters ({r.iters})")
    rl = cfg.rl
    for name in ("steps", "prompts_per_step", "max_new_tokens"):
        need(getattr(rl, name) >= 1, f"rl.{name}", getattr(rl, name), "at least 1")
    need(rl.group_size >= 2, "rl.group_size", rl.group_size, "at least 2 (GRPO compares completions of a prompt)")
    need(rl.lr > 0, "rl.lr", rl.lr, "above 0")
    need(rl.warmup >= 0, "rl.warmup", rl.warmup, "0 or more")
    need(rl.temperature > 0, "rl.temperature", rl.temperature, "above 0 (the rollouts are sampled)")
    need(rl.clip_grad > 0, "rl.clip_grad", rl.clip_grad, "above 0")
    need(rl.kl_coef >= 0, "rl.kl_coef", rl.kl_coef, "0 or more")
    need(0 <= cfg.eps < 1, "eps", cfg.eps, "0 or more and below 1 (weights lie in [1 - eps, 1 + eps])")
    for name in ("arms", "post_rl_arms"):
        unknown = [a for a in getattr(cfg, name) if a not in ARMS]
        need(not unknown, name, list(getattr(cfg, name)), f"arms among {', '.join(ARMS)}")
    need(bool(cfg.arms), "arms", [], "one arm or more")
    need(bool(cfg.seeds), "seeds", [], "one seed or more")
    need(cfg.eval_limit >= 0, "eval_limit", cfg.eval_limit, "0 (all problems) or more")
    need(cfg.max_new_tokens >= 1, "max_new_tokens", cfg.max_new_tokens, "at least 1")
    need(cfg.engine in ("vllm", "hf"), "engine", cfg.engine, "vllm or hf")
    need(cfg.rl_engine in ("own", "trl"), "rl_engine", cfg.rl_engine, "own or trl")
    if problems:
        name, value, requirement = problems[0]
        raise ValueError(f"{name} = {json.dumps(value)}: must be {requirement}")


def record(out: Path, cfg: ExperimentConfig, quick: bool) -> None:
    """Write `cfg` into the output folder `out` (its CONFIG_FILE)."""
    write_json_atomic(out / CONFIG_FILE, {"quick": quick, "config": cfg.to_dict()})


def recorded(out: Path) -> dict[str, Any]:
    """What `record` wrote into `out`: {"quick": ..., "config": ...}; ValueError naming the file if it is
    not that (FileNotFoundError if there is none)."""
    path = out / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not a config.json the experiment wrote ({e!r})") from None
    if not isinstance(data, dict) or not {"quick", "config"} <= data.keys():
        raise ValueError(f"{path}: not a config.json the experiment wrote (it lacks quick or config)")
    return data


def changed_fields(saved: dict[str, Any], cfg: ExperimentConfig) -> list[str]:
    """Dotted keys where `saved` (a config.json's "config") differs from `cfg`, selection fields aside."""
    return config_differences(saved, cfg.to_dict())


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys where two recorded configurations differ, selection fields aside.

    A field that one of them lacks (it was written before the field existed) counts as its default
    value, which is what that run used."""
    from remit.annotate.claim import differences  # "key: old -> new" lines

    defaults = json.loads(json.dumps(ExperimentConfig().to_dict()))
    a, b = (
        {k: v for k, v in _with_defaults(json.loads(json.dumps(c)), defaults).items() if k not in SELECTION_FIELDS}
        for c in (a, b)
    )
    return [line.partition(": ")[0] for line in differences(a, b)]


def _with_defaults(recorded: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`recorded` with the fields it lacks, at every level, taken from `defaults`."""
    out = dict(defaults)
    for k, v in recorded.items():
        d = defaults.get(k)
        out[k] = _with_defaults(v, d) if isinstance(v, dict) and isinstance(d, dict) else v
    return out
