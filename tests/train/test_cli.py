"""The CLI surface and config validation (no Megatron needed)."""

from __future__ import annotations

import pytest

from remit.common.flags import config_from_args, to_argv
from remit.train.cli import ExportConfig, export_parser, train_parser
from remit.train.config import TrainConfig

#: Frozen: adding or renaming a flag must be a deliberate change here and in docs/training.md.
TRAIN_FLAGS = [
    "--adam-beta1",
    "--adam-beta2",
    "--adam-eps",
    "--async-save",
    "--attention",
    "--bf16",
    "--center",
    "--clip-grad",
    "--data",
    "--eps",
    "--eval-data",
    "--eval-interval",
    "--eval-iters",
    "--exit-duration-in-mins",
    "--exit-signal-handler",
    "--export-hf",
    "--external-weights",
    "--global-batch-size",
    "--init-config",
    "--init-hf",
    "--keep-last",
    "--keep-ratio",
    "--load",
    "--log-interval",
    "--lr",
    "--lr-decay-iters",
    "--lr-decay-style",
    "--lr-warmup-iters",
    "--micro-batch-size",
    "--min-lr",
    "--overlap-grad-reduce",
    "--override-schedule",
    "--peak-tflops",
    "--pipeline-model-parallel-size",
    "--recompute-granularity",
    "--recompute-method",
    "--recompute-num-layers",
    "--save",
    "--save-interval",
    "--seed",
    "--sequence-parallel",
    "--shuffle-shards",
    "--skip-validate",
    "--tensor-model-parallel-size",
    "--tensorboard-dir",
    "--train-iters",
    "--trust-checkpoint",
    "--use-distributed-optimizer",
    "--verbose",
    "--wandb-project",
    "--weight-decay",
    "--weights",
]


def _flags(parser) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help")


def test_flags_are_frozen():
    assert _flags(train_parser()) == TRAIN_FLAGS
    assert _flags(export_parser()) == ["--iteration", "--load", "--out", "--trust-checkpoint", "--verbose"]


def test_flags_documented(pytestconfig):
    doc = (pytestconfig.rootpath / "docs" / "training.md").read_text()
    missing = [f for f in TRAIN_FLAGS if f"`{f}" not in doc]
    assert not missing, f"flags missing from docs/training.md: {missing}"


def test_flags_build_a_config(tmp_path):
    args = train_parser().parse_args(
        [
            "--data",
            "d",
            "--init-hf",
            "m",
            "--save",
            str(tmp_path),
            "--train-iters",
            "10",
            "--weights",
            "online",
            "--eps",
            "0.1",
            "--center",
            "segment",
            "--keep-ratio",
            "0.5",
        ]
    )
    cfg = config_from_args(TrainConfig, args)
    assert cfg.weights == "online" and cfg.eps == 0.1 and cfg.center == "segment" and cfg.decay_iters == 10
    assert cfg.keep_ratio == 0.5 and cfg.init_config is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"weights": "dynamic"}, "weights"),
        ({"eps": 1.5}, "eps"),
        ({"center": "doc"}, "center"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"global_batch_size": 5, "micro_batch_size": 2}, "global_batch_size"),
        ({"lr_warmup_iters": 10, "train_iters": 10}, "lr_warmup_iters"),
        ({"min_lr": 1.0, "lr": 0.1}, "lr"),
        ({"lr_decay_style": "step"}, "lr_decay_style"),
        ({"clip_grad": -1.0}, "clip_grad"),
        ({"init_hf": None}, "init_hf"),
        ({"init_config": "c.json"}, "init_config"),
        ({"weights": "rho1", "keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"pipeline_model_parallel_size": 0}, "pipeline_model_parallel_size"),
        ({"sequence_parallel": True}, "sequence_parallel"),
        ({"recompute_granularity": "some"}, "recompute_granularity"),
        ({"recompute_method": "uniform"}, "recompute_method"),
        ({"recompute_granularity": "selective", "recompute_num_layers": 2}, "recompute_num_layers"),
        ({"recompute_granularity": "full", "recompute_method": "every"}, "recompute_method"),
        ({"recompute_granularity": "full", "recompute_num_layers": 0}, "recompute_num_layers"),
        ({"eval_interval": 5}, "eval_data"),
        ({"eval_data": "e", "eval_iters": 0}, "eval_iters"),
        ({"keep_last": 0}, "keep_last"),
        ({"exit_duration_in_mins": 0}, "exit_duration_in_mins"),
        ({"peak_tflops": -1.0}, "peak_tflops"),
    ],
)
def test_bad_config_names_the_field(tmp_path, kwargs, field):
    base = {"data": "d", "init_hf": "m", "save": tmp_path / "run"}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        TrainConfig(**{**base, **kwargs})


def test_parallel_and_recompute_flags_reach_the_config(tmp_path):
    args = train_parser().parse_args(
        ["--data", "d", "--init-hf", "m", "--save", str(tmp_path), "--train-iters", "10"]
        + ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--pipeline-model-parallel-size", "4"]
        + ["--use-distributed-optimizer", "--overlap-grad-reduce", "--bf16", "--recompute-granularity", "full"]
    )
    cfg = config_from_args(TrainConfig, args)
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.model_parallel_size) == (2, 4, 8)
    assert cfg.sequence_parallel and cfg.use_distributed_optimizer and cfg.overlap_grad_reduce and cfg.bf16
    # full recompute defaults to Megatron-LM's usual choice: every layer on its own
    assert (cfg.recompute_granularity, cfg.recompute_method, cfg.recompute_num_layers) == ("full", "uniform", 1)
    plain = config_from_args(
        TrainConfig, train_parser().parse_args(["--data", "d", "--init-hf", "m", "--train-iters", "3", "--save", "s"])
    )
    assert (plain.recompute_granularity, plain.recompute_method, plain.recompute_num_layers) == (None, None, None)


def test_flags_round_trip(tmp_path):
    """Every field with a flag survives config -> argv -> parser -> config, values away from their defaults."""
    cfg = TrainConfig(
        data=tmp_path / "d",
        init_hf=tmp_path / "m",
        save=tmp_path / "run",
        weights="online",
        eps=0.1,
        center="segment",
        keep_ratio=0.5,
        shuffle_shards=3,
        skip_validate=True,
        attention="dense",
        save_interval=7,
        export_hf=tmp_path / "hf",
        train_iters=50,
        override_schedule=True,
        micro_batch_size=2,
        global_batch_size=8,
        lr=1e-3,
        min_lr=1e-5,
        lr_warmup_iters=5,
        lr_decay_iters=40,
        lr_decay_style="linear",
        weight_decay=0.01,
        seed=7,
        tensor_model_parallel_size=2,
        sequence_parallel=True,
        recompute_granularity="full",
        recompute_method="block",
        recompute_num_layers=2,
        bf16=True,
        log_interval=5,
    )
    argv = to_argv(TrainConfig, cfg.to_dict())
    again = config_from_args(TrainConfig, train_parser().parse_args(argv))
    assert again == cfg
    export = ExportConfig(load=tmp_path / "run", out=tmp_path / "hf", iteration=3, trust_checkpoint=True)
    assert config_from_args(ExportConfig, export_parser().parse_args(to_argv(ExportConfig, vars(export)))) == export


def test_export_flag_is_declared_once():
    """export-hf's --trust-checkpoint is TrainConfig's declaration, not a copy of it."""
    train = {a.dest: a for a in train_parser()._actions}
    export = {a.dest: a for a in export_parser()._actions}
    assert export["trust_checkpoint"].help == train["trust_checkpoint"].help


def test_batch_layout():
    cfg = TrainConfig(data="d", init_hf="m", micro_batch_size=2, global_batch_size=8)
    assert cfg.batch_layout(2) == (8, 2) and cfg.batch_layout(4) == (8, 1)
    with pytest.raises(ValueError, match="global_batch_size"):
        cfg.batch_layout(3)


def test_the_tokenizer_hash_of_a_planned_run_is_the_one_remit_train_computes(
    model_pair, other_tokenizer_model, tmp_path
):
    """The contract between the packages: `remit-annotate` records a tokenizer hash in the run it plans
    (and so in the manifest), and `remit-train` recomputes it from --init-hf to refuse foreign data.
    The two sides load the tokenizer on their own; the hashes must agree, and differ for another one."""
    from remit.annotate.cli import main
    from remit.annotate.workdir import WorkDir
    from remit.train.preflight import tokenizer_sha256

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "Two plus two is four."}\n{"text": "def f(): return 1"}\n', encoding="utf-8")
    base, rl = model_pair
    flags = ["--base", str(base), "--rl", str(rl), "--input", str(corpus), "--output", str(tmp_path / "out")]
    assert main(["plan", *flags, "--engine", "hf", "--seq-len", "16"]) == 0
    run = WorkDir(tmp_path / "out").read_run()
    assert run is not None
    recorded = run.tokenizer["sha256"]
    assert recorded == tokenizer_sha256(base)
    assert tokenizer_sha256(other_tokenizer_model) != recorded


def test_launch_scripts(pytestconfig, tmp_path):
    """torchrun.sh starts remit-train on every local rank; the sbatch script is valid bash."""
    import os
    import subprocess
    import sys

    launch = pytestconfig.rootpath / "remit" / "train" / "launch"
    env = {**os.environ, "NPROC": "1", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(launch / "torchrun.sh"), "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--weights {none,static,online,shuffled,rho1,external}" in proc.stdout
    assert subprocess.run(["bash", "-n", str(launch / "slurm.sbatch")]).returncode == 0


def test_library_warnings_are_hidden_unless_verbose(random_llama, tmp_path):
    """Megatron-Core warns at import that Apex and Transformer Engine are absent; remit-train hides that
    unless --verbose. The run stops at the missing data, after the import: its error line stays."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "remit.train", "--data", str(tmp_path / "none"), "--init-hf", str(random_llama)]
    cmd += ["--save", str(tmp_path / "run"), "--train-iters", "1"]
    from remit.common.quiet import QUIET_ENV

    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}  # not what other tests set in this process
    quiet = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    loud = subprocess.run([*cmd, "--verbose"], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and loud.returncode == 2, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert "Warning" in loud.stderr, "the reference run must show Megatron-Core's import warnings"
    assert quiet.stderr.splitlines() == [line for line in loud.stderr.splitlines() if line.startswith("remit-train:")]
    assert quiet.stderr.startswith("remit-train: error:") and "manifest.json" in quiet.stderr


def test_sinks_take_every_numeric_field_but_the_step():
    from remit.train.sinks import scalars

    record = {"step": 3, "loss": 2.5, "tokens": 120, "lr": 1e-4, "note": "x", "flag": True, "none": None}
    assert scalars(record) == {"loss": 2.5, "tokens": 120.0, "lr": 1e-4}
