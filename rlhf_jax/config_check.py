"""Validation of a whole config before any work: one line per error, naming the field.

`resolve(config, num_devices)` checks every stage the config names (sizes
divisible by the device count, label counts, files, method combinations) and
returns the derived sizes that `launch.py --dry_run` prints; each rule that
ties fields together is written once, here or beside the field it governs
(`config_lib.LoopConfig.validate`, `parallel.check_layout`), and `resolve` runs
it. `check_ppo` is PPO's share; `num_updates` is LHP's count of PPO updates.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections

from rlhf_jax.algorithms.optim import ADAM_STYLES
from rlhf_jax.algorithms.ppo import WHITEN_SCOPES
from rlhf_jax.config_lib import LoopConfig, loop_groups, stage_list
from rlhf_jax.data.datasets import check_query_format
from rlhf_jax.infra import parallel


def _need(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def num_updates(ppo_cfg) -> int:
    """`ceil(total_episodes / batch_size)`, as LHP `train_policy.nupdates` (line 79)."""
    return -(-ppo_cfg.total_episodes // ppo_cfg.batch_size)


def check_ppo(p, num_devices: int) -> int:
    """Validates the `ppo` fields the PPO trainer reads for `num_devices`; returns the
    per-device batch. `resolve` runs it for a config with a ppo stage."""
    _need(p.total_episodes >= p.batch_size,
          f"ppo.total_episodes={p.total_episodes} is smaller than ppo.batch_size={p.batch_size}")
    _need(p.batch_size % num_devices == 0,
          f"ppo.batch_size={p.batch_size} is not divisible by the device count {num_devices}")
    local = p.batch_size // num_devices
    _need(local % p.nminibatches == 0,
          f"ppo.batch_size per device ({local}) is not divisible by ppo.nminibatches="
          f"{p.nminibatches}")
    check_adam(p, "ppo")
    _need(p.whiten_scope in WHITEN_SCOPES,
          f"ppo.whiten_scope={p.whiten_scope!r}: expected one of {WHITEN_SCOPES}")
    # LHP `train_policy.train` (lines 459-462) refuses these too.
    _need(not (p.whiten_scope == "minibatch" and p.whiten_rewards
               and local // p.nminibatches < 8),
          f"ppo.whiten_scope='minibatch' whitens each device's minibatch of "
          f"{local // p.nminibatches} rows; LHP requires at least 8 (raise ppo.batch_size or "
          "lower ppo.nminibatches)")
    _need(p.get("keep_checkpoints", 2) >= 1,
          f"ppo.keep_checkpoints={p.get('keep_checkpoints')} must be >= 1")
    _need(p.reward_source in ("rm", "gold"),
          f"ppo.reward_source={p.reward_source!r}: expected 'rm' or 'gold'")
    return local


def check_adam(group, name: str) -> None:
    """An optimizer group's `adam` style and `adam_eps` (every group with an `adam`)."""
    _need(group.adam in ADAM_STYLES,
          f"{name}.adam={group.adam!r}: expected one of {ADAM_STYLES}")
    _need(group.adam_eps > 0, f"{name}.adam_eps={group.adam_eps!r} must be > 0")


def _resolve_model_task(c, stages, num_devices: int, d: dict) -> None:
    """Validates the `model`, `parallel` and `task` groups (every stage reads them)."""
    _need(c.model.dtype in ("float32", "bfloat16"),
          f"model.dtype={c.model.dtype!r}: expected float32 or bfloat16")
    _need(c.model.param_dtype in ("float32", "bfloat16"),
          f"model.param_dtype={c.model.param_dtype!r}: expected float32 or bfloat16")
    _need(c.model.kv_cache_dtype in ("", "float32", "bfloat16"),
          f"model.kv_cache_dtype={c.model.kv_cache_dtype!r}: expected '' (the compute dtype), "
          "float32 or bfloat16")
    _need(c.model.attention_impl in ("", "xla", "cudnn"),
          f"model.attention_impl={c.model.attention_impl!r}: expected '' (auto), xla or cudnn")
    _need(isinstance(c.model.logits_chunk, int) and c.model.logits_chunk >= 0,
          f"model.logits_chunk={c.model.logits_chunk!r} must be an int >= 0")
    f = c.parallel.fsdp
    parallel.check_layout(c.parallel.mode, f, num_devices)
    if c.parallel.mode == "mesh":
        d["mesh"] = {"data": num_devices // f, "fsdp": f}
    _need(c.model.init in ("pretrained", "scratch"),
          f"model.init={c.model.init!r}: expected 'pretrained' or 'scratch'")
    # A checkpoint names its own architecture; model.arch sizes a random init.
    _need(c.model.get("arch", "gpt2") == "gpt2" or c.model.init == "scratch"
          or "pretrain" in stages or not c.model.name_or_path.startswith("gpt2"),
          f"model.arch={c.model.get('arch')!r} but model.name_or_path="
          f"{c.model.name_or_path!r} is a GPT-2 checkpoint: arch= applies to a random init "
          "(model.init='scratch') or the pretrain stage")
    t = c.task
    check_query_format(t)
    _need(t.query_length > 0, f"task.query_length={t.query_length} must be positive")
    _need(t.response_length > 0, f"task.response_length={t.response_length} must be positive")
    _need(t.temperature > 0, f"task.temperature={t.temperature} must be positive")
    if t.truncate_token is not None:
        _need(0 <= t.truncate_after < t.response_length,
              f"task.truncate_after={t.truncate_after} must lie in [0, task.response_length="
              f"{t.response_length})")
    ctx = t.query_length + t.response_length
    if c.model.init == "scratch" or "pretrain" in stages:
        _need(ctx <= c.model.n_positions,
              f"task.query_length + task.response_length = {ctx} exceeds model.n_positions="
              f"{c.model.n_positions}")
        _need(c.model.n_embd % c.model.n_head == 0,
              f"model.n_embd={c.model.n_embd} is not divisible by model.n_head={c.model.n_head}")
        arch = c.model.get("arch", "gpt2")
        _need(arch in ("gpt2", "llama", "qwen2", "qwen3"),
              f"model.arch={arch!r}: expected gpt2, llama, qwen2 or qwen3")
        kv = c.model.get("n_kv_head", 0)
        _need(isinstance(kv, int) and kv >= 0 and (kv == 0 or c.model.n_head % kv == 0),
              f"model.n_kv_head={kv!r} must be 0 or divide model.n_head={c.model.n_head}")
    d["context"] = ctx


def resolve(c, num_devices: int) -> dict:
    """Validates `c` for `num_devices` and returns derived sizes (one line per error)."""
    stages = stage_list(c)
    d = {"devices": num_devices, "stages": ",".join(stages)}
    _resolve_model_task(c, stages, num_devices, d)

    for group in loop_groups(c):
        if group in stages:
            loop = LoopConfig.from_config(c, group)
            loop.validate()
            check_adam(c[group], group)

    def divisible(value, by, field, by_field):
        _need(value % by == 0, f"{field}={value} is not divisible by {by_field}={by}")

    if "pretrain" in stages:
        divisible(c.pretrain.batch_size, num_devices, "pretrain.batch_size", "the device count")
    if "sft" in stages:
        divisible(c.sft.batch_size, num_devices, "sft.batch_size", "the device count")
        divisible(c.sft.num_train, c.sft.batch_size, "sft.num_train", "sft.batch_size")
        d["sft_steps"] = c.sft.num_train // c.sft.batch_size * c.sft.epochs
    if "reward" in stages or "dpo" in stages or "labels" in stages:
        lt = c.labels.type
        _need(lt in ("pairwise", "scalar_rating", "scalar_compare") or
              (lt.startswith("best_of_") and lt[8:].isdigit() and int(lt[8:]) >= 2),
              f"labels.type={lt!r}: expected best_of_N, pairwise, scalar_rating or scalar_compare")
        _need(c.labels.source in ("mock", "file"),
              f"labels.source={c.labels.source!r}: expected 'mock' or 'file'")
        _need(c.labels.source == "file" or c.labels.gold in MOCK_GOLDS,
              f"labels.source='mock' picks by the gold reward: labels.gold={c.labels.gold!r} "
              f"must be one of {MOCK_GOLDS}")
        share = c.labels.get("reference_share", 0.0)
        _need(0.0 <= share <= 1.0, f"labels.reference_share={share} must be in [0, 1]")
        _need(share == 0.0 or (c.labels.source == "mock" and c.labels.type == "pairwise"
                               and c.task.query_dataset in ("tldr", "cnndm", "world_tldr")),
              f"labels.reference_share={share} compares policy samples with the dataset's "
              "reference summaries: it needs labels.source='mock', labels.type='pairwise' and "
              "a task.query_dataset with references (tldr, cnndm, world_tldr)")
        _need(c.labels.source == "file" or not (c.labels.path or c.labels.val_path),
              f"labels.path={c.labels.path!r} is set but labels.source='mock' does not read "
              "it: add --config.labels.source=file")
        if c.labels.source == "file":
            _need(c.labels.format != "sff" or c.task.query_format == "sff",
                  "labels.format='sff': SFF comparisons hold Stiennon-format queries; the "
                  "reward model would read other queries than PPO gives it: set "
                  "task.query_format='sff'")
            _need(bool(c.labels.path),
                  "labels.source='file' needs labels.path: a label file (LHP's released "
                  "labels, e.g. sentiment/offline_5k.json, or SFF comparisons); see README "
                  "'Data'")
            # The reward stage validates on labels.num_val held-out labels.
            _need(not ("reward" in stages and c.labels.num_val and not c.labels.val_path),
                  f"labels.num_val={c.labels.num_val} held-out labels, but labels.source='file' "
                  "has no labels.val_path: give one, or set labels.num_val=0")
    if "reward" in stages:
        divisible(c.reward.batch_size, num_devices, "reward.batch_size", "the device count")
        divisible(c.labels.num_train, c.reward.batch_size, "labels.num_train", "reward.batch_size")
        d["reward_steps"] = c.labels.num_train // c.reward.batch_size * c.reward.epochs
        if c.reward.normalize_before or c.reward.normalize_after:
            divisible(c.reward.rollout_batch_size, num_devices, "reward.rollout_batch_size",
                      "the device count")
    if "dpo" in stages:
        divisible(c.dpo.batch_size, num_devices, "dpo.batch_size", "the device count")
        _need(c.labels.type == "pairwise" or c.labels.type.startswith("best_of_"),
              f"labels.type={c.labels.type!r}: DPO needs comparisons")
    _need(c.labels.gold in MOCK_GOLDS + ("none",),
          f"labels.gold={c.labels.gold!r}: expected one of {MOCK_GOLDS + ('none',)}")
    _need((c.labels.gold in SUMMARY_GOLDS)
          <= (c.task.query_dataset == "world_tldr"),
          f"labels.gold={c.labels.gold!r} judges summaries of world stories: it needs "
          "task.query_dataset='world_tldr'")
    _need(not c.task.story_lead or c.task.query_dataset == "world_tldr",
          f"task.story_lead=True writes world stories: it needs task.query_dataset="
          f"'world_tldr', not {c.task.query_dataset!r}")
    _need(c.labels.ungrammatical_penalty >= 0,
          f"labels.ungrammatical_penalty={c.labels.ungrammatical_penalty} must be >= 0")
    if "ppo" in stages:
        p = c.ppo
        _need(p.reward_source == "rm" or c.labels.gold != "none",
              "ppo.reward_source='gold' needs a gold reward: labels.gold is 'none'")
        _need(p.value_model in ("shared", "separate"),
              f"ppo.value_model={p.value_model!r}: expected 'shared' or 'separate'")
        local = check_ppo(p, num_devices)
        if p.value_model == "separate":
            _need(p.reward_source == "rm" or "reward" in stages,
                  "ppo.value_model='separate' is initialised from the reward model: "
                  "add the reward stage or use value=shared")
        if c.kl.adaptive:
            _need(c.kl.target > 0, f"kl.target={c.kl.target} must be > 0 when kl.adaptive")
        d["ppo_updates"] = num_updates(p)
        d["ppo_minibatch"] = p.batch_size // p.nminibatches
        d["ppo_per_device_batch"] = local
    _resolve_methods(c, stages, num_devices, d)
    if c.labels.online.enabled:
        d["online_rounds"] = _resolve_online(c, stages, num_devices)
    if "eval" in stages:
        divisible(c.eval.batch_size, num_devices, "eval.batch_size", "the device count")
        divisible(c.eval.num_queries, c.eval.batch_size, "eval.num_queries", "eval.batch_size")
        d["best_of_n_kl"] = {n: round(math.log(n) - (n - 1) / n, 4) for n in c.eval.best_of_n}
    return d


def check_files(c: ml_collections.ConfigDict) -> None:
    """ValueError naming the field of an input file the labels stage would read that
    is missing (local label files). Separate from `resolve`, which also validates
    sweep members whose inputs an earlier member will write."""
    if c.labels.source != "file" or "labels" not in stage_list(c):
        return
    for field in ("path", "val_path"):
        path = c.labels[field]
        _need(not path or "://" in path or os.path.isfile(path),
              f"labels.{field}={path!r}: no such file")


# Gold rewards that can say which words lower them (`spans.span_source`).
SPAN_GOLDS = ("world", "vader")
# Golds a mock labeller can answer from (labelling.labelers.GOLDS).
SUMMARY_GOLDS = ("summary", "summary_accuracy", "summary_facts", "summary_skim")
MOCK_GOLDS = ("world", "vader") + SUMMARY_GOLDS


def _resolve_methods(c, stages, num_devices: int, d: dict) -> None:
    """Validates span marks, the token-level RM, the RM head, ppo.algo, bon_sft, ul
    and the eval judge (the fields of `docs/methods.md`)."""
    sp, r, p = c.labels.spans, c.reward, c.ppo
    has_marks = sp.enabled or c.labels.source == "file"  # files may carry people's marks
    if sp.enabled:
        for field in ("miss", "flip"):
            _need(0.0 <= sp[field] <= 1.0,
                  f"labels.spans.{field}={sp[field]} must lie in [0, 1]")
        kinds = [k.strip() for k in sp.kinds.split(",") if k.strip()]
        _need(bool(kinds) and set(kinds) <= {"negative", "ungrammatical"},
              f"labels.spans.kinds={sp.kinds!r}: expected a comma list of negative, "
              "ungrammatical")
        _need(c.labels.gold in SPAN_GOLDS or c.labels.source == "file",
              f"labels.spans.enabled: the mock span labeller marks the words that lower "
              f"labels.gold={c.labels.gold!r}, which has no word-level spans (one of "
              f"{SPAN_GOLDS})")
    _need(r.head in ("linear", "scalar_mix", "selector"),
          f"reward.head={r.head!r}: expected linear, scalar_mix or selector")
    if r.head == "selector":
        _need(isinstance(r.selector_blocks, int) and r.selector_blocks >= 1,
              f"reward.selector_blocks={r.selector_blocks!r} must be an int >= 1")
        if c.model.init == "scratch" or "pretrain" in stages:
            bad = [i for i in r.selector_layers if not 0 <= i <= c.model.n_layer]
            _need(not bad, f"reward.selector_layers={tuple(r.selector_layers)}: layers {bad} "
                  f"outside 0..model.n_layer={c.model.n_layer}")
        _need(not ("ppo" in stages and p.value_model == "separate" and p.algo == "ppo"),
              "ppo.value_model='separate' is initialised from the reward model, which "
              "reward.head='selector' cannot seed; use value=shared or another head")
    if r.token_head:
        _need(r.span_coef >= 0, f"reward.span_coef={r.span_coef} must be >= 0")
        _need(has_marks, "reward.token_head trains on span marks: set labels.spans.enabled "
              "(the mock span labeller) or read a label file that carries them")
    if "ppo" in stages:
        _need(p.algo in ("ppo", "rloo", "grpo", "reinforce"),
              f"ppo.algo={p.algo!r}: expected ppo, rloo, grpo or reinforce")
        _need(p.get("grpo_variant", "grpo") in ("grpo", "dr_grpo"),
              f"ppo.grpo_variant={p.get('grpo_variant')!r}: expected grpo or dr_grpo")
        _need(p.get("kl_in", "reward") in ("reward", "loss"),
              f"ppo.kl_in={p.get('kl_in')!r}: expected reward or loss")
        if p.algo in ("rloo", "grpo"):
            _need(isinstance(p.rloo_k, int) and p.rloo_k >= 2,
                  f"ppo.rloo_k={p.rloo_k!r} must be an int >= 2")
            _need(p.batch_size % p.rloo_k == 0,
                  f"ppo.batch_size={p.batch_size} is not divisible by ppo.rloo_k={p.rloo_k}")
            d["rloo_queries_per_update"] = p.batch_size // p.rloo_k
        if p.algo == "reinforce":
            _need(0.0 <= p.baseline_decay < 1.0,
                  f"ppo.baseline_decay={p.baseline_decay} must lie in [0, 1)")
        _need(p.token_reward_mode in ("hard", "prob"),
              f"ppo.token_reward_mode={p.token_reward_mode!r}: expected 'hard' or 'prob'")
        _need(p.token_reward_coef >= 0,
              f"ppo.token_reward_coef={p.token_reward_coef} must be >= 0")
        if p.token_reward_coef:
            _need(r.token_head and p.reward_source == "rm",
                  "ppo.token_reward_coef > 0 reads a token-level reward model: set "
                  "reward.token_head (switch token_rm=on) and ppo.reward_source='rm'")
    if "bon_sft" in stages:
        b = c.bon_sft
        _need(isinstance(b.n, int) and b.n >= 1, f"bon_sft.n={b.n!r} must be an int >= 1")
        _need(isinstance(b.rounds, int) and b.rounds >= 1,
              f"bon_sft.rounds={b.rounds!r} must be an int >= 1")
        _need(b.batch_size % num_devices == 0,
              f"bon_sft.batch_size={b.batch_size} is not divisible by the device count "
              f"{num_devices}")
        _need(b.num_queries % b.batch_size == 0,
              f"bon_sft.num_queries={b.num_queries} is not divisible by bon_sft.batch_size="
              f"{b.batch_size}")
        d["bon_sft_steps"] = b.num_queries // b.batch_size * b.epochs * b.rounds
    if "ul" in stages:
        _need(c.ul.alpha >= 0, f"ul.alpha={c.ul.alpha} must be >= 0")
        _need(c.ul.batch_size % num_devices == 0,
              f"ul.batch_size={c.ul.batch_size} is not divisible by the device count "
              f"{num_devices}")
        _need(c.labels.type == "pairwise" or c.labels.type.startswith("best_of_"),
              f"labels.type={c.labels.type!r}: the ul stage needs a preferred response "
              "(best_of_N or pairwise)")
        _need(has_marks, "the ul stage trains on span marks: set labels.spans.enabled (the "
              "mock span labeller) or read a label file that carries them")
    j = c.eval.judge
    if "eval" in stages and j.enabled:
        _need(j.noise >= 0, f"eval.judge.noise={j.noise} must be >= 0")
        _need(c.labels.gold in SPAN_GOLDS,
              f"eval.judge.enabled: the judge weighs labels.gold={c.labels.gold!r}'s bad "
              f"words; it needs one of {SPAN_GOLDS}")


def _resolve_online(c, stages, num_devices: int) -> int:
    """Validates `labels.online` (enabled); returns the collections PPO will make."""
    o = c.labels.online
    _need(jax.process_count() == 1,
          f"labels.online.enabled runs on a single process, not {jax.process_count()} (the "
          "labeller and the label files live on one host)")
    _need("reward" in stages and "ppo" in stages,
          "labels.online.enabled needs the reward and ppo stages (it retrains the reward "
          "model during PPO)")
    _need(c.ppo.reward_source == "rm",
          f"labels.online.enabled needs ppo.reward_source='rm', got {c.ppo.reward_source!r}")
    for field, low in (("every", 1), ("num_queries", 1), ("max_skips", 1),
                       ("reward_epochs", 1), ("k", 0)):
        value = o[field]
        _need(isinstance(value, int) and not isinstance(value, bool) and value >= low,
              f"labels.online.{field}={value!r} must be an int >= {low}")
    _need(o.poll_seconds > 0, f"labels.online.poll_seconds={o.poll_seconds} must be > 0")
    _need(o.labeler in ("mock", "human"),
          f"labels.online.labeler={o.labeler!r}: expected 'mock' or 'human'")
    _need(o.retrain in ("continue", "reinit"),
          f"labels.online.retrain={o.retrain!r}: expected 'continue' or 'reinit'")
    lt = c.labels.type
    k = {"pairwise": 2, "scalar_compare": 2, "scalar_rating": 1}.get(lt) or int(lt[8:])
    _need(o.k in (0, k), f"labels.online.k={o.k} but labels.type={lt!r} has K={k} "
          "responses per query (0 takes it from labels.type)")
    if o.labeler == "human":
        _need(lt == "pairwise" or lt.startswith("best_of_"),
              f"labels.online.labeler='human' answers comparisons: labels.type={lt!r} must "
              "be best_of_N or pairwise")
        _need(bool(o.db), "labels.online.labeler='human' needs labels.online.db: the label "
              "server's SQLite file (python -m rlhf_jax.labelling.label_server --db FILE)")
        directory = os.path.dirname(os.path.abspath(o.db))
        _need(os.path.isdir(directory),
              f"labels.online.db={o.db!r}: directory {directory} does not exist")
    else:
        _need(c.labels.gold in MOCK_GOLDS, f"labels.online.labeler='mock' picks by the gold "
              f"reward: labels.gold={c.labels.gold!r} must be one of {MOCK_GOLDS}")
    _need(c.labels.batch_size % num_devices == 0,
          f"labels.batch_size={c.labels.batch_size} is not divisible by the device count "
          f"{num_devices}")
    updates = num_updates(c.ppo)
    rounds = (updates - 1) // o.every
    _need(rounds >= 1, f"labels.online.every={o.every}: no collection within the {updates} "
          "PPO updates (one runs before each update whose index is a multiple of it)")
    return rounds
