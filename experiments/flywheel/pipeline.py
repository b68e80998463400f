"""The flywheel, stage by stage, through remit's own command lines.

    data -> data-extra (confirmatory split, clean annealing split, noise labels) -> tokenizer
    -> pack (remit-annotate pack) -> pretrain (remit-train --init-config, --weights none)
    -> rl (GRPO) -> annotate (remit-annotate, base + RL) -> diagnose (weights per token kind)
    -> the controls the arms need: sft + annotate-sft, annotate-clean, oracle (external weights)
    -> eval-refs (base, RL, SFT on every split, when the confirmatory split is evaluated)
    -> mid (remit-train, one run per arm and seed) -> eval -> post-rl (the same GRPO on mid-trained models) -> report

Every stage writes `OUT/stages/NAME.json` (its wall time) when it finishes; a rerun with the same
OUT skips finished stages and finished runs, so an interrupted experiment continues where it stopped.
Subprocess output goes to `OUT/logs/`; a failing stage stops the run with the tail of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments.flywheel.config import ARMS, ORACLE_WEIGHTS, ExperimentConfig, TrainRecipe, arm_data
from remit.common.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[2]


class StageError(RuntimeError):
    """A stage failed; the message names the stage, the log file and its last lines."""


def _cli(name: str, module: str) -> list[str]:
    """remit's console script beside this interpreter, else the same entry point through `python -m`."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


REMIT_ANNOTATE = ("remit-annotate", "remit.annotate.cli")
REMIT_TRAIN = ("remit-train", "remit.train")


class Pipeline:
    def __init__(
        self, cfg: ExperimentConfig, out: Path, eval_splits: tuple[str, ...], final_only: bool = False
    ) -> None:
        """`final_only`: evaluate only the last checkpoint of each mid-training run (no curves)."""
        self.cfg, self.out, self.eval_splits, self.final_only = cfg, out.resolve(), eval_splits, final_only
        for sub in ("stages", "logs", "models", "runs", "eval"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "PYTHONWARNINGS": "ignore",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }

    # -- plumbing -----------------------------------------------------------------------------------------

    @property
    def data(self) -> Path:
        return self.out / "data"

    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def done(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def fresh(self, stage: str) -> str:
        """`stage`, or `stage-2`, `stage-3`... : a name without a marker yet, for a stage that runs again on
        new work (the evaluation of runs added later), so that every invocation's wall time is kept."""
        name, n = stage, 1
        while self.done(name):
            n += 1
            name = f"{stage}-{n}"
        return name

    def finish(self, stage: str, t0: float, **info: Any) -> None:
        seconds = time.perf_counter() - t0
        write_json_atomic(self.marker(stage), {"stage": stage, "seconds": seconds, **info})
        print(f"== {stage}: done in {seconds:.0f} s", flush=True)

    def run(self, stage: str, cmd: list[str]) -> None:
        log = self.out / "logs" / f"{stage}.log"
        print(f"-- {stage}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}", flush=True)
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n\n")
            f.flush()
            proc = subprocess.run(cmd, env=self.env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-25:])
            raise StageError(f"stage {stage} failed (exit {proc.returncode}); log {log}:\n{tail}")

    def python(self, stage: str, module: str, *args: str) -> None:
        self.run(stage, [sys.executable, "-m", module, *args])

    # -- stages -------------------------------------------------------------------------------------------

    def stage_data(self) -> None:
        from experiments.flywheel.data import generate, read_jsonl, vocabulary_texts
        from experiments.flywheel.models import build_tokenizer, write_config

        if self.done("data"):
            return
        t0 = time.perf_counter()
        try:
            stats = generate(self.cfg.data, self.data)
        except ValueError as e:  # e.g. too few free number chains of one length for the sizes asked
            raise StageError(f"stage data: {e}") from None
        texts = vocabulary_texts() + [r["text"] for r in read_jsonl(self.data / "pretrain.jsonl")]
        vocab = build_tokenizer(texts, self.out / "tokenizer")
        write_config(self.cfg.shape, vocab, self.out / "model_config")
        self.finish("data", t0, vocab=vocab, splits=stats["splits"])

    def stage_data_extra(self) -> None:
        """The splits added after the first ones (`data.extra_splits`), which leave those as they are."""
        from experiments.flywheel.data import extra_splits

        if self.done("data-extra"):
            return
        t0 = time.perf_counter()
        try:
            stats = extra_splits(self.cfg.data, self.data)
        except ValueError as e:
            raise StageError(f"stage data-extra: {e}") from None
        self.finish("data-extra", t0, splits=stats)

    def _train_flags(self, r: TrainRecipe, data: Path, save: Path, seed: int) -> list[str]:
        interval = max(1, r.iters // max(r.saves, 1))
        return [
            "--data", str(data), "--save", str(save), "--seed", str(seed),
            "--train-iters", str(r.iters), "--micro-batch-size", str(r.micro_batch),
            "--global-batch-size", str(r.global_batch), "--lr", str(r.lr), "--min-lr", str(r.min_lr),
            "--lr-warmup-iters", str(r.warmup), "--lr-decay-style", "cosine", "--save-interval", str(interval),
            "--log-interval", str(max(1, r.iters // 20)),
        ]  # fmt: skip

    def stage_pretrain(self) -> None:
        if self.done("pretrain"):
            return
        t0 = time.perf_counter()
        packed = self.out / "packed"
        self.run(
            "pack",
            [*_cli(*REMIT_ANNOTATE), "pack", "--tokenizer", str(self.out / "tokenizer"),
             "--input", str(self.data / "pretrain.jsonl"), "--output", str(packed),
             "--seq-len", str(self.cfg.seq_len), "--rows-per-shard", str(self.cfg.rows_per_shard)],
        )  # fmt: skip
        t_pack = time.perf_counter() - t0
        base = self.out / "models" / "base"
        run = self.out / "runs" / "pretrain"
        shutil.rmtree(run, ignore_errors=True)  # a pre-training killed midway starts over (minutes)
        flags = self._train_flags(self.cfg.pretrain, packed, run, seed=self.cfg.base_seed)
        self.run(
            "pretrain",
            [*_cli(*REMIT_TRAIN), *flags, "--weights", "none", "--init-config", str(self.out / "model_config"),
             "--export-hf", str(base)],
        )  # fmt: skip
        self.finish("pretrain", t0, pack_seconds=t_pack)

    def _grpo(self, stage: str, model: Path, out: Path, seed: int) -> None:
        cfg = {**asdict(self.cfg.rl), "seed": seed}
        module = "experiments.flywheel.grpo_trl" if self.cfg.rl_engine == "trl" else "experiments.flywheel.grpo"
        self.python(
            stage, module, "--model", str(model), "--data", str(self.data),
            "--out", str(out), "--config", json.dumps(cfg),
        )  # fmt: skip

    def _evaluate(
        self,
        stage: str,
        out_dir: Path,
        models: Sequence[Path] = (),
        runs: Sequence[Path] = (),
        splits: Sequence[str] | None = None,
    ) -> None:
        """One evaluation process for all of them (start-up costs more than a tiny model's decoding).

        A run's intermediate checkpoints (the curves) are evaluated on the first held-out split only
        (the time budget); every split at the end of a run.
        """
        if not models and not runs:
            return
        splits = tuple(splits or self.eval_splits)
        args = ["--data", str(self.data), "--out-dir", str(out_dir), "--splits", ",".join(splits)]
        curve = [s for s in splits if s == "heldout"] or list(splits)
        args += ["--curve-splits", ",".join(curve)]
        args += ["--max-new-tokens", str(self.cfg.max_new_tokens), "--limit", str(self.cfg.eval_limit)]
        if self.final_only:
            args += ["--final-only"]
        for m in models:
            args += ["--model", str(m)]
        for r in runs:
            args += ["--run", str(r)]
        self.python(stage, "experiments.flywheel.evaluate", *args)

    def stage_rl(self) -> None:
        if self.done("rl"):
            return
        t0 = time.perf_counter()
        models = self.out / "models"
        self._grpo("rl", models / "base", models / "rl", seed=self.cfg.base_seed)
        self.finish("rl", t0)

    def stage_eval_base_rl(self) -> None:
        if self.done("eval-base-rl"):
            return
        t0 = time.perf_counter()
        models = self.out / "models"
        self._evaluate("eval-base-rl", self.out / "eval", models=[models / "base", models / "rl"])
        self.finish("eval-base-rl", t0)

    def stage_annotate(self, stage: str = "annotate", reference: str = "rl", split: str = "anneal") -> None:
        """remit-annotate with the base model and `reference` (models/NAME) on the annealing file `split`,
        into the folder named like the stage ("annotate" writes "annotated", "annotate-sft" "annotated-sft")."""
        if self.done(stage):
            return
        t0 = time.perf_counter()
        models = self.out / "models"
        output = self.out / stage.replace("annotate", "annotated", 1)
        self.run(
            stage,
            [*_cli(*REMIT_ANNOTATE), "--base", str(models / "base"), "--rl", str(models / reference),
             "--input", str(self.data / f"{split}.jsonl"), "--output", str(output),
             "--seq-len", str(self.cfg.seq_len), "--rows-per-shard", str(self.cfg.rows_per_shard),
             "--eps", str(self.cfg.eps), "--engine", self.cfg.engine],
        )  # fmt: skip
        self.run(f"{stage}-stats", [*_cli(*REMIT_ANNOTATE), "stats", str(output), "--json"])
        self.finish(stage, t0)

    def stage_diagnose(self, stage: str = "diagnose", annotated: str = "annotated", split: str = "anneal") -> None:
        """Where an annotation put its weights, per kind of token (diagnose.py), before any arm trains on it:
        the noise rate and eps are judged here, without an evaluation split. Written to
        weights_by_token_kind.json ("diagnose") or weights_by_token_kind-NAME.json ("diagnose-NAME")."""
        from experiments.flywheel.diagnose import markdown, weight_by_token_kind

        if self.done(stage):
            return
        t0 = time.perf_counter()
        table = weight_by_token_kind(self.out, annotated, split)
        suffix = stage.removeprefix("diagnose")
        write_json_atomic(self.out / f"weights_by_token_kind{suffix}.json", table)
        print(markdown(table), flush=True)
        self.finish(stage, t0)

    def stage_controls(self, arms: Sequence[str]) -> None:
        """What the confirmatory study's control arms need, and only for the arms asked for: the SFT
        reference and its annotation (online-sft), the clean split's annotation (clean-*), the oracle's
        external weights (oracle)."""
        if any(arm_data(a) == "annotated-sft" for a in arms):
            self.stage_sft()
            self.stage_annotate("annotate-sft", reference="sft")
            self.stage_diagnose("diagnose-sft", "annotated-sft")
        if any(arm_data(a) == "annotated-clean" for a in arms):
            self.stage_annotate("annotate-clean", split="anneal_clean")
            self.stage_diagnose("diagnose-clean", "annotated-clean", "anneal_clean")
        if "oracle" in arms:
            self.stage_oracle()

    def stage_sft(self) -> None:
        if self.done("sft"):
            return
        t0 = time.perf_counter()
        models = self.out / "models"
        cfg = {**asdict(self.cfg.rl), "seed": self.cfg.base_seed}
        self.python(
            "sft", "experiments.flywheel.sft", "--model", str(models / "base"), "--data", str(self.data),
            "--out", str(models / "sft"), "--config", json.dumps(cfg),
        )  # fmt: skip
        self.finish("sft", t0)

    def stage_oracle(self) -> None:
        from experiments.flywheel.oracle import OracleError, write_oracle_weights

        if self.done("oracle"):
            return
        t0 = time.perf_counter()
        dest = self.out / ORACLE_WEIGHTS
        shutil.rmtree(dest, ignore_errors=True)
        try:
            counts = write_oracle_weights(self.out, self.out / "annotated", dest, self.cfg.eps)
        except OracleError as e:
            raise StageError(f"stage oracle: {e}") from None
        write_json_atomic(self.out / "weights_oracle.json", counts)
        self.finish("oracle", t0, **counts)

    def stage_eval_refs(self, splits: Sequence[str]) -> None:
        """The reference models (base, RL, and the SFT reference once trained) on `splits`, into
        eval/refs/NAME.json; a model evaluated before is not evaluated again."""
        models = self.out / "models"
        todo = [
            models / name
            for name in ("base", "rl", "sft")
            if (models / name).exists() and not (self.out / "eval" / "refs" / f"{name}.json").exists()
        ]
        if todo:
            t0 = time.perf_counter()
            stage = self.fresh("eval-refs")
            self._evaluate(stage, self.out / "eval" / "refs", models=todo, splits=splits)
            self.finish(stage, t0, models=[m.name for m in todo])

    def mid_name(self, arm: str, seed: int) -> str:
        return f"{arm}-s{seed}"

    def stage_mid(self, arms: tuple[str, ...], seeds: tuple[int, ...]) -> None:
        for arm in arms:
            if arm not in ARMS:
                raise StageError(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        runs = []
        for seed in seeds:  # seed-major: a partial run has every arm of its first seeds
            for arm in arms:
                name = self.mid_name(arm, seed)
                run = self.out / "runs" / "mid" / name
                runs.append(run)
                stage = f"mid-{name}"
                if self.done(stage):
                    continue
                t0 = time.perf_counter()
                shutil.rmtree(run, ignore_errors=True)
                flags = self._train_flags(self.cfg.mid, self.out / arm_data(arm), run, seed)
                if "external" in ARMS[arm]:
                    flags += ["--external-weights", str(self.out / ORACLE_WEIGHTS)]
                self.run(
                    stage,
                    [*_cli(*REMIT_TRAIN), *flags, *ARMS[arm], "--init-hf", str(self.out / "models" / "base"),
                     "--export-hf", str(self.out / "models" / "mid" / name)],
                )  # fmt: skip
                self.finish(stage, t0)
        todo = [r for r in runs if not (self.out / "eval" / "mid" / f"{r.name}.json").exists()]
        if todo:
            t0 = time.perf_counter()
            stage = self.fresh("eval-mid")
            self._evaluate(stage, self.out / "eval" / "mid", runs=todo)
            self.finish(stage, t0, runs=[r.name for r in todo])

    def stage_post_rl(self, arms: tuple[str, ...], seeds: tuple[int, ...]) -> None:
        tuned = []
        for seed in seeds:
            for arm in arms:
                name = self.mid_name(arm, seed)
                stage = f"post-rl-{name}"
                src = self.out / "models" / "mid" / name
                dst = self.out / "models" / "post-rl" / name
                if not src.exists():
                    continue
                tuned.append(dst)
                if self.done(stage):
                    continue
                t0 = time.perf_counter()
                self._grpo(stage, src, dst, seed=seed)
                self.finish(stage, t0)
        todo = [m for m in tuned if not (self.out / "eval" / "post_rl" / f"{m.name}.json").exists()]
        if todo:
            t0 = time.perf_counter()
            stage = self.fresh("eval-post-rl")
            self._evaluate(stage, self.out / "eval" / "post_rl", models=todo)
            self.finish(stage, t0, models=[m.name for m in todo])

    def stage_report(self) -> dict[str, Any]:
        from experiments.flywheel.report import write_report

        t0 = time.perf_counter()
        res = write_report(self.out, self.cfg, self.eval_splits)
        self.finish("report", t0)
        return res
