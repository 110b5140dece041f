"""A run's bookkeeping: opening its workdir, and each stage's marker.

`open_run` checks the inputs and the workdir and builds the `Context` every
stage reads; `finished_stage`, `start_stage` and `record_stage` are the life of
one stage's marker (`WORKDIR/stages/<stage>.json`). `pipeline.run` (one run)
and `rlhf_jax.members` (a group's shared stage) both drive stages with them.
A trainer that returned early on SIGTERM makes its stage raise `Preempted`.
"""

from __future__ import annotations

import copy
import json
import logging
import os

import ml_collections
import numpy as np

from rlhf_jax import config_check, config_guard, config_lib
from rlhf_jax.infra import compile_cache, parallel
from rlhf_jax.infra.files import write_json_atomic
from rlhf_jax.infra.metrics import MetricsWriter
from rlhf_jax.stages.context import Context, resolve_task, setup_tokenizer


def data_parallel(cfg) -> parallel.DataParallel:
    """The devices and backend `cfg.parallel` names (multi-host set up first)."""
    parallel.initialize_distributed()
    return parallel.DataParallel(cfg.parallel.mode, cfg.parallel.num_devices or None,
                                 fsdp=cfg.parallel.fsdp)


class Preempted(Exception):
    """A stage stopped early on SIGTERM after saving; relaunch to resume."""


def raise_if_preempted(summary: dict, stage: str) -> None:
    """A trainer that returned early (SIGTERM) saved its checkpoint: stop the
    pipeline before exporting a half-trained model or marking the stage done."""
    if summary.get("stopped_early") or summary.get("preempted"):
        raise Preempted(stage)


def scalars(summary: dict) -> dict:
    """The JSON-able scalars of a trainer's summary (nested dicts kept), for a marker."""
    out = {}
    for k, v in (summary or {}).items():
        if isinstance(v, (int, float, bool, str)) or (np.ndim(v) == 0 and hasattr(v, "item")):
            out[k] = v.item() if hasattr(v, "item") else v
        elif isinstance(v, dict):
            inner = scalars(v)
            if inner:
                out[k] = inner
    return out


def _check_workdir(workdir: str) -> None:
    """ValueError, before any work, for a workdir that is a file or cannot be written."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is a file, not a directory")
    try:
        os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
        probe = os.path.join(workdir, "stages", f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok\n")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"--workdir={workdir} cannot be written ({e.strerror}: "
                         f"{e.filename}); nothing was written") from None


def _restart_rows(ctx: Context, stage: str) -> None:
    """A stage with no committed checkpoint starts over: drop the rows (metrics,
    samples) an interrupted earlier attempt logged, so none appears twice. A stage
    resuming from a checkpoint drops the rows after it itself (`writer.resume`)."""
    ckpt_dir = ctx.path("checkpoints", stage)
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
        return
    for rows in (stage, "online") if stage == "ppo" else (stage,):
        ctx.writer.resume(rows, -1)


def open_run(cfg: ml_collections.ConfigDict, workdir: str,
             dp: parallel.DataParallel | None = None, *,
             allow_config_change: bool = False) -> Context:
    """The shared state of a run in `workdir`: devices, metrics writer, tokenizer, task
    fields; writes `config.json`. Close `ctx.writer` when done.

    Before any work: bad input files or workdir are one ValueError, and a workdir
    whose started stages ran with another config is refused (`config_guard`) unless
    `allow_config_change`. `cfg` is not changed (the run fills task ids from the
    tokenizer in its own copy), so a caller may pass it again to resume.
    """
    cfg = copy.deepcopy(cfg)
    if dp is None:
        dp = data_parallel(cfg)
    derived = config_check.resolve(cfg, dp.num_devices)
    if not os.path.exists(os.path.join(workdir, "stages", "labels.json")):
        config_check.check_files(cfg)  # the labels stage reads them
    _check_workdir(workdir)
    launched = config_guard.config_dict(cfg)  # before the tokenizer fills in task ids
    config_guard.check(workdir, launched, config_lib.stage_list(cfg),
                       allow_changes=allow_config_change)
    wandb = {"project": cfg.log.wandb_project, "name": cfg.name} if cfg.log.wandb_project else None
    writer = MetricsWriter(workdir, tensorboard=cfg.log.tensorboard, wandb_config=wandb)
    ctx = Context(cfg=cfg, workdir=workdir, dp=dp, writer=writer,
                  stages=config_lib.stage_list(cfg), launched=launched)
    setup_tokenizer(ctx)
    resolve_task(ctx)
    if parallel.process_is_main():
        config_guard.write_config_json(workdir, json.loads(cfg.to_json_best_effort()))
    logging.info("derived sizes: %s", derived)
    return ctx


def finished_stage(ctx: Context, stage: str) -> dict | None:
    """The summary a finished stage left (`stages/<stage>.json`), else None."""
    marker = ctx.path("stages", f"{stage}.json")
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return json.load(f)


def record_stage(ctx: Context, stage: str, out: dict | None, seconds: float,
                 compiled: compile_cache.CompileStats) -> dict:
    """Marks `stage` finished with its summary, time and compile time; prints the line."""
    out = {**(out or {}), "seconds": round(seconds, 1),
           "compile_seconds": round(compiled.seconds, 1)}
    if parallel.process_is_main():
        write_json_atomic(ctx.path("stages", f"{stage}.json"), out)
    print(f"[{stage}] done in {out['seconds']:.0f}s ({compiled.describe()})", flush=True)
    return out


def start_stage(ctx: Context, stage: str) -> None:
    """Before a stage runs (or resumes): records its config (`config_guard`) and
    drops the rows of an earlier attempt that it will log again."""
    if parallel.process_is_main():
        config_guard.record(ctx.workdir, ctx.launched, stage, ctx.stages)
    _restart_rows(ctx, stage)
