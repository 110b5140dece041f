"""The stages `launch.py` runs: pretrain -> sft -> labels -> reward -> ppo -> dpo -> eval -> figures.

Each stage a config names runs in that order. A finished stage leaves
`WORKDIR/stages/<stage>.json` (its summary) and its artifacts; a relaunch skips
it. A stage interrupted midway resumes from its own Orbax checkpoints
(`WORKDIR/checkpoints/<stage>`), so a run killed at any moment and relaunched
with the same command ends with the same metrics as one never interrupted.

A stage reads what earlier stages left in the workdir and calls one trainer;
what the stages share (config, devices, tokenizer, models on disk) is
`context.Context`, host-batched sampling is `batched`, the eval stage is `eval`.

Artifacts:
  tokenizer/                 the trained tokenizer (offline default)
  models/{pretrained,sft,policy,dpo}/   Hugging Face GPT-2 directories
  models/reward/             reward model params (msgpack) and its config
  labels/{train,val}.jsonl   the labels the reward model trained on
  labels/online_<r>.jsonl, online/round_<r>/   online collection rounds (rlhf_jax.stages.online)
  eval.json                  the final evaluation summary
"""

from __future__ import annotations

import dataclasses
import copy
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhf_jax import config_guard, config_check, config_lib
from rlhf_jax.data import label_files as label_files_lib, labels as labels_lib
from rlhf_jax.infra import compile_cache, parallel
from rlhf_jax.infra.files import write_json_atomic
from rlhf_jax.infra.metrics import MetricsWriter
from rlhf_jax.models import loading
from rlhf_jax.models.heads import PolicyWithValueHead, ValueModel, value_params_from_reward
from rlhf_jax.stages.batched import gold_function, postprocess, sample_responses
from rlhf_jax.stages.context import Context, resolve_task, setup_tokenizer, stage_key


# --------------------------------------------------------------------------
# Stages.


def stage_pretrain(ctx: Context) -> dict:
    """Tiny GPT-2 pretrained on the synthetic corpus (offline default only)."""
    from rlhf_jax.stages import sft

    cfg = ctx.cfg
    p = cfg.pretrain
    eos = ctx.tokenizer.eos_token_id
    stream: list[int] = []
    for text in ctx.corpus:
        stream.extend(ctx.tokenizer.encode(text, add_special_tokens=False))
        stream.append(eos)
    n = len(stream) // p.seq_len
    tokens = np.asarray(stream[: n * p.seq_len], np.int32).reshape(n, p.seq_len)
    n_val = min(p.num_val, n // 10)
    n_train = (n - n_val) // p.batch_size * p.batch_size
    train, val = tokens[:n_train], tokens[n - n_val:]
    model = loading.causal_lm(cfg, len(ctx.tokenizer))
    # Jitted: an eager init compiles one tiny program per op (about 80 here).
    params = jax.jit(model.init)(stage_key(cfg, "pretrain"), jnp.zeros((1, 8), jnp.int32))["params"]
    params, summary = sft.train_lm(cfg, model=model, params=params, tokens_NxT=train,
                                   mask_NxT=np.ones_like(train), val_tokens_NxT=val,
                                   val_mask_NxT=np.ones_like(val), dp=ctx.dp,
                                   rng=stage_key(cfg, "pretrain"), workdir=ctx.workdir,
                                   writer=ctx.writer)
    _raise_if_preempted(summary, "pretrain")
    ctx.save_lm("pretrained", model, params)
    return {"sequences": int(n_train), "tokens": int(n_train * p.seq_len),
            **_scalars(summary)}


def stage_sft(ctx: Context) -> dict:
    from rlhf_jax.stages import sft

    cfg = ctx.cfg
    train_q = ctx.queries("train", limit=cfg.sft.num_train)
    val_q = ctx.queries("valid", limit=cfg.sft.num_val)
    if train_q.reference_NxR is None:
        raise ValueError(f"task.query_dataset={cfg.task.query_dataset!r} has no reference "
                         "responses; the sft stage needs them")
    if len(train_q) < cfg.sft.num_train:
        raise ValueError(f"sft.num_train={cfg.sft.num_train} but the dataset has only "
                         f"{len(train_q)} training examples")
    as_data = lambda d: sft.SFTData(*ctx.policy_queries(d.query_NxQ, d.query_mask_NxQ),  # noqa: E731
                                    d.reference_NxR, d.reference_mask_NxR)
    model, params = ctx.base_model()
    params, summary = sft.train_sft(cfg, model=model, params=params, train=as_data(train_q),
                                    val=as_data(val_q), dp=ctx.dp, rng=stage_key(cfg, "sft"),
                                    workdir=ctx.workdir, writer=ctx.writer)
    _raise_if_preempted(summary, "sft")
    ctx.save_lm("sft", model, params)
    return _scalars(summary)


def stage_labels(ctx: Context) -> dict:
    """Labels for the reward model: from files, or a mock labeller on policy samples."""
    cfg = ctx.cfg
    lb = cfg.labels
    os.makedirs(ctx.path("labels"), exist_ok=True)
    kind, k = labels_lib.parse_label_type(lb.type)
    if lb.source == "file":
        read = dict(format=lb.format)
        if lb.format == "sff":
            read.update(encode=lambda s: ctx.tokenizer.encode(s, add_special_tokens=False),
                        offsets=lambda s: ctx.tokenizer(s, add_special_tokens=False,
                                                        return_offsets_mapping=True)[
                                                            "offset_mapping"],
                        query_length=cfg.task.query_length,
                        response_length=cfg.task.response_length,
                        eos_token=cfg.task.eos_token, pad_token=cfg.task.pad_token)
        elif lb.format == "lhp":
            read.update(label_type=lb.type, vocab_size=ctx.vocab_rows,
                        pad_token=cfg.task.pad_token)
        else:
            read.update(label_type=kind, vocab_size=ctx.vocab_rows,
                        pad_token=cfg.task.pad_token, query_length=cfg.task.query_length,
                        response_length=cfg.task.response_length)
        train = label_files_lib.read_labels(lb.path, **read)
        val = label_files_lib.read_labels(lb.val_path, **read) if lb.val_path else None
    else:
        from rlhf_jax.labelling.labelers import LabelRequest, MockLabeler, make_gold

        model, params = ctx.initial_policy()
        labeler = MockLabeler(make_gold(lb.gold, ungrammatical_penalty=lb.ungrammatical_penalty),
                              label_type=kind, noise=lb.mock_noise, seed=cfg.seed)
        need = lb.num_train + lb.num_val
        qs = ctx.queries("train")
        rows = qs.indices(0, need)  # the first `need` of the seeded order
        q, m = qs.query_NxQ[rows], qs.query_mask_NxQ[rows]
        key = stage_key(cfg, "labels")
        responses = []
        for j in range(k):
            raw, _ = sample_responses(ctx, model, params, q, m, jax.random.fold_in(key, j),
                                      lb.batch_size)
            responses.append(postprocess(ctx, raw))
        resp_NxKxR = np.stack([r for r, _ in responses], axis=1)
        mask_NxKxR = np.stack([mk for _, mk in responses], axis=1)
        request = LabelRequest.from_tokens(q, m, resp_NxKxR, mask_NxKxR, pad_token=cfg.task.pad_token,
                                           decode=ctx.decode)
        every = labeler.label(request)
        train = every.subset(np.arange(lb.num_train))
        val = every.subset(np.arange(lb.num_train, need)) if lb.num_val else None
    if lb.spans.enabled:  # the mock span labeller marks records that carry no marks
        from rlhf_jax.labelling import spans

        train, val = (spans.mark_unmarked(cfg, ctx.decode, x) for x in (train, val))
    if parallel.process_is_main():
        label_files_lib.write_labels_jsonl(ctx.path("labels", "train.jsonl"), train)
        if val is not None:
            label_files_lib.write_labels_jsonl(ctx.path("labels", "val.jsonl"), val)
    out = {"num_train": len(train), "num_val": 0 if val is None else len(val)}
    if train.gold_NxK is not None:
        # How often the labelled best is the gold best (1.0 for a noiseless mock).
        out["gold_best_agreement"] = float(np.mean(np.argmax(train.gold_NxK, 1) == train.best_N))
    if train.span_mask_NxKxR is not None:
        out["span_marked_fraction"] = float(train.span_mask_NxKxR.sum()
                                            / train.response_mask_NxKxR.sum())
    return out


def _read_labels(ctx: Context):
    cfg = ctx.cfg
    kind, _ = labels_lib.parse_label_type(cfg.labels.type)
    kw = dict(query_length=cfg.task.query_length, response_length=cfg.task.response_length,
              pad_token=cfg.task.pad_token, vocab_size=ctx.vocab_rows, label_type=kind)
    train = label_files_lib.read_labels_jsonl(ctx.path("labels", "train.jsonl"), **kw)
    val_path = ctx.path("labels", "val.jsonl")
    val = label_files_lib.read_labels_jsonl(val_path, **kw) if os.path.exists(val_path) else None
    return train, val


def reward_inputs(ctx: Context) -> dict:
    """The reward stage's inputs: `rm_model`, `rm_params` (initial), `train`, `val`
    labels, `normalizer` and the stage key `rng` (also for `rlhf_jax.members`)."""
    from rlhf_jax.stages import reward

    cfg = ctx.cfg
    train, val = _read_labels(ctx)
    policy_model, policy_params = ctx.initial_policy()
    rm_model, rm_params = loading.init_reward_model(cfg, stage_key(cfg, "reward"), policy_model,
                                                    policy_params)
    return dict(rm_model=rm_model, rm_params=rm_params, train=train, val=val,
                normalizer=reward.reference_normalizer(ctx, policy_model, policy_params),
                rng=stage_key(cfg, "reward"))


def finish_reward(ctx: Context, rm_model, rm_params, summary: dict) -> dict:
    """Saves the trained reward model; the stage's summary for its marker."""
    _raise_if_preempted(summary, "reward")
    if parallel.process_is_main():
        loading.save_reward_model(ctx.path("models", "reward"), rm_model, rm_params)
    return _scalars(summary)


def stage_reward(ctx: Context) -> dict:
    from rlhf_jax.stages import reward_train

    inputs = reward_inputs(ctx)
    rm_params, summary = reward_train.train_reward_model(
        ctx.cfg, **inputs, dp=ctx.dp, workdir=ctx.workdir, writer=ctx.writer)
    return finish_reward(ctx, inputs["rm_model"], rm_params, summary)


def ppo_models_and_params(ctx: Context):
    cfg = ctx.cfg
    ref_model, ref_params = ctx.initial_policy()
    rm_model, rm_params = ctx.reward_model() or (None, None)
    if cfg.ppo.reward_source == "rm" and rm_model is None:
        raise ValueError("ppo.reward_source='rm' needs the reward stage (models/reward is missing)")
    from rlhf_jax.stages.rollout import PPOModels

    if cfg.ppo.algo != "ppo":  # RLOO / REINFORCE: the plain LM, no value model
        params = {"policy": ref_params}
        models = PPOModels(policy=ref_model, reference=ref_model, reward=rm_model, no_value=True)
    elif cfg.ppo.value_model == "shared":
        policy = PolicyWithValueHead(ref_model.config)
        init = jax.jit(policy.init)(stage_key(cfg, "ppo"), jnp.zeros((1, 8), jnp.int32))["params"]
        params = {"policy": {"transformer": ref_params["transformer"],
                             "value_head": init["value_head"]}}
        models = PPOModels(policy=policy, reference=ref_model, reward=rm_model)
    else:
        if rm_model is None:
            raise ValueError("ppo.value_model='separate' is initialised from the reward model")
        value = ValueModel(rm_model.config, head=rm_model.head)
        params = {"policy": ref_params, "value": value_params_from_reward(rm_params)}
        models = PPOModels(policy=ref_model, reference=ref_model, value=value, reward=rm_model)
    return models, params, ref_params, rm_params


def stage_ppo(ctx: Context) -> dict:
    from rlhf_jax.stages.train_ppo import PPOTrainer

    cfg = ctx.cfg
    models, params, ref_params, rm_params = ppo_models_and_params(ctx)
    trainer = PPOTrainer(cfg, models, ctx.dp, task=ctx.task_spec())
    qs = ctx.queries("train")
    online = None
    if cfg.labels.online.enabled:  # Ziegler 2.3: label as the policy moves, retrain the RM
        from rlhf_jax.stages.online import OnlineCollector

        online = OnlineCollector(ctx, policy_model=models.reference, rm_model=models.reward,
                                 rm_params=rm_params)
    params, summary = trainer.train(params=params, ref_params=ref_params,
                                    rm_params=rm_params if cfg.ppo.reward_source == "rm" else None,
                                    queries=qs, workdir=ctx.workdir, writer=ctx.writer,
                                    gold_fn=gold_function(ctx), decode=ctx.decode, online=online)
    return finish_ppo(ctx, models, params, summary)


def finish_ppo(ctx: Context, models, params, summary: dict) -> dict:
    """Exports the trained policy (`models/policy`); the stage summary (its last log row)."""
    _raise_if_preempted(summary, "ppo")
    ctx.save_lm("policy", models.reference, {"transformer": params["policy"]["transformer"]})
    hist = summary.get("history") or []  # a resume of a finished PPO keeps only the last
    return {"updates": summary["updates"], **({k: v for k, v in hist[-1].items()} if hist else {})}


def _policy_labels(ctx: Context, labels):
    """`labels` with their (raw) queries as the policy reads them (DPO trains the policy)."""
    if labels is None:
        return None
    q, m = ctx.policy_queries(labels.query_NxQ, labels.query_mask_NxQ)
    return dataclasses.replace(labels, query_NxQ=q, query_mask_NxQ=m)


def stage_dpo(ctx: Context) -> dict:
    from rlhf_jax.stages import dpo

    cfg = ctx.cfg
    train, val = _read_labels(ctx)
    # Labels hold raw queries (what the RM reads); the policy reads them formatted.
    train, val = _policy_labels(ctx, train), _policy_labels(ctx, val)
    model, params = ctx.initial_policy()
    params, summary = dpo.train_dpo(cfg, model=model, params=params, ref_params=params,
                                    train=train, val=val, dp=ctx.dp, rng=stage_key(cfg, "dpo"),
                                    workdir=ctx.workdir, writer=ctx.writer)
    _raise_if_preempted(summary, "dpo")
    ctx.save_lm("dpo", model, params)
    return _scalars(summary)


def stage_bon_sft(ctx: Context) -> dict:
    """Expert iteration: best-of-n by the reward model, then SFT on the chosen samples."""
    from rlhf_jax.stages import expert_iteration

    cfg = ctx.cfg
    rm = ctx.reward_model()
    if rm is None:
        raise ValueError("the bon_sft stage ranks samples with the reward model: add the reward "
                         "stage (models/reward is missing)")
    model, params = ctx.initial_policy()
    params, summary = expert_iteration.train_bon_sft(
        cfg, task=ctx.task_spec(), model=model, params=params, rm_model=rm[0], rm_params=rm[1],
        queries=ctx.queries("train"), dp=ctx.dp, rng=stage_key(cfg, "bon_sft"),
        workdir=ctx.workdir, writer=ctx.writer)
    _raise_if_preempted(summary, "bon_sft")
    ctx.save_lm("bon_sft", model, params)
    return _scalars(summary)


def stage_ul(ctx: Context) -> dict:
    """Likelihood on preferred responses + unlikelihood on span-marked tokens (no RL)."""
    from rlhf_jax.stages import unlikelihood

    cfg = ctx.cfg
    train, val = _read_labels(ctx)
    model, params = ctx.initial_policy()
    params, summary = unlikelihood.train_ul(cfg, model=model, params=params, train=train,
                                            val=val, dp=ctx.dp, rng=stage_key(cfg, "ul"),
                                            workdir=ctx.workdir, writer=ctx.writer)
    _raise_if_preempted(summary, "ul")
    ctx.save_lm("ul", model, params)
    return _scalars(summary)


def stage_eval(ctx: Context) -> dict:
    from rlhf_jax.stages import eval as eval_lib

    return eval_lib.evaluate(ctx)


def stage_figures(ctx: Context) -> dict:
    from rlhf_jax.experiments import figures

    paths = figures.make_figures(ctx.workdir) if parallel.process_is_main() else []
    return {"figures": [os.path.relpath(p, ctx.workdir) for p in paths]}


STAGE_FNS = {
    "pretrain": stage_pretrain,
    "sft": stage_sft,
    "labels": stage_labels,
    "reward": stage_reward,
    "ppo": stage_ppo,
    "dpo": stage_dpo,
    "bon_sft": stage_bon_sft,
    "ul": stage_ul,
    "eval": stage_eval,
    "figures": stage_figures,
}


class Preempted(Exception):
    """A stage stopped early on SIGTERM after saving; relaunch to resume."""


def _raise_if_preempted(summary: dict, stage: str) -> None:
    """A trainer that returned early (SIGTERM) saved its checkpoint: stop the
    pipeline before exporting a half-trained model or marking the stage done."""
    if summary.get("stopped_early") or summary.get("preempted"):
        raise Preempted(stage)


def _scalars(summary: dict) -> dict:
    out = {}
    for k, v in (summary or {}).items():
        if isinstance(v, (int, float, bool, str)) or (np.ndim(v) == 0 and hasattr(v, "item")):
            out[k] = v.item() if hasattr(v, "item") else v
        elif isinstance(v, dict):
            inner = _scalars(v)
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
    parallel.initialize_distributed()
    if dp is None:
        dp = parallel.DataParallel(cfg.parallel.mode, cfg.parallel.num_devices or None,
                                   fsdp=cfg.parallel.fsdp)
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


def run(cfg: ml_collections.ConfigDict, workdir: str, *, until: str | None = None,
        allow_config_change: bool = False) -> dict:
    """Runs (or resumes) every stage the config names; returns their summaries.

    `until`: stop before that stage (a sweep runs a group's shared stage for
    all its members at once, `rlhf_jax.members`, then relaunches each).
    `allow_config_change`: see `open_run`.
    """
    ctx = open_run(cfg, workdir, allow_config_change=allow_config_change)
    results = {}
    t0 = time.time()
    compile_cache.track()
    try:
        for stage in ctx.stages:
            if stage == until:
                break
            done = finished_stage(ctx, stage)
            if done is not None:
                results[stage] = done
                print(f"[{stage}] done earlier; skipping", flush=True)
                continue
            print(f"[{stage}] starting", flush=True)
            start_stage(ctx, stage)
            ts, cs = time.time(), compile_cache.stats()
            out = STAGE_FNS[stage](ctx)  # raises Preempted on SIGTERM: no marker
            results[stage] = record_stage(ctx, stage, out, time.time() - ts,
                                          compile_cache.stats() - cs)
    finally:
        ctx.writer.close()
    results["total_seconds"] = round(time.time() - t0, 1)
    return results
