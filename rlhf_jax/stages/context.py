"""What the stages share: the config, the workdir's layout, devices, tokenizer and models.

`pipeline.run` builds one `Context` and hands it to every stage; the online
label collection (`online.py`) and the evaluation (`eval.py`) read it too.
Models move between stages only through the workdir (`models/...`), so a
stage run alone after a relaunch sees what it would have seen in one go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlhf_jax import config_lib
from rlhf_jax.data import datasets, summaries, synthetic, tasks
from rlhf_jax.infra import parallel
from rlhf_jax.infra.metrics import MetricsWriter
from rlhf_jax.models import load_tokenizer, loading, save_pretrained
from rlhf_jax.stages.rollout import TaskSpec

# Synthetic query datasets, per process: a sweep opens dozens of runs on one
# corpus and tokenizer, and encoding 36,000 stories takes seconds each time.
_QUERIES: dict = {}
_QUERIES_KEPT = 8

# Fold-in constants: one independent PRNG stream per stage from the base key.
_STREAMS = {s: i + 101 for i, s in enumerate(config_lib.STAGE_STREAMS)}


def stage_key(cfg, stage: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(cfg.seed), _STREAMS[stage])


@dataclasses.dataclass
class Context:
    """Config, workdir, devices, writer, the stages this run names, tokenizer and corpus."""

    cfg: ml_collections.ConfigDict
    workdir: str
    dp: parallel.DataParallel
    writer: MetricsWriter
    stages: list[str]
    tokenizer: Any = None
    corpus: list[str] | None = None
    # The config as launched, before the tokenizer fills task ids: what each stage
    # records when it starts (`config_guard`).
    launched: dict | None = None
    # `task.query_prefix` / `task.query_suffix` encoded (`resolve_task`).
    query_prefix_ids: tuple[int, ...] = ()
    query_suffix_ids: tuple[int, ...] = ()
    # sha256 of the tokenizer's JSON, the query memo's key (`queries`).
    tokenizer_fingerprint: str | None = None
    # Ids the policy can emit: the tokenizer's, or a checkpoint's embedding rows
    # when it has more (`resolve_task`).
    vocab_rows: int = 0

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)

    def policy_queries(self, query_NxQ, query_mask_NxQ):
        """What the policy and reference read of stored (raw) queries: prefix + query +
        suffix (LHP `lm_tasks.query_formatter`); the reward model reads them raw."""
        return tasks.format_queries(query_NxQ, query_mask_NxQ, self.query_prefix_ids,
                                    self.query_suffix_ids, self.cfg.task.pad_token)

    def task_spec(self):
        """The rollout's `TaskSpec`, with the query prefix and suffix as token ids."""
        return TaskSpec.from_config(self.cfg.task, query_prefix=self.query_prefix_ids,
                                    query_suffix=self.query_suffix_ids)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < len(self.tokenizer)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def queries(self, split: str, limit: int | None = None) -> datasets.QueryDataset:
        key = self._queries_key(split, limit)
        if key is not None and key in _QUERIES:
            return _QUERIES[key]
        out = datasets.load_queries(self.cfg.task, self.tokenizer, split=split,
                                    seed=self.cfg.seed, limit=limit, synthetic_texts=self.corpus)
        if key is not None:
            for a in (out.query_NxQ, out.query_mask_NxQ):
                a.flags.writeable = False  # shared by every run of this process
            while len(_QUERIES) >= _QUERIES_KEPT:
                _QUERIES.pop(next(iter(_QUERIES)))
            _QUERIES[key] = out
        return out

    def _queries_key(self, split, limit):
        """What the synthetic queries depend on, or None (other datasets: not memoised)."""
        if self.cfg.task.query_dataset != "synthetic" or not getattr(self.tokenizer, "is_fast",
                                                                      False):
            return None
        if self.tokenizer_fingerprint is None:  # once per run: a GPT-2 vocabulary is 2 MB of JSON
            self.tokenizer_fingerprint = hashlib.sha256(
                self.tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
        return (self.tokenizer_fingerprint, self.cfg.task.to_json(), self.cfg.pretrain.num_docs,
                self.cfg.seed, split, limit)

    # -- models in the workdir ----------------------------------------------------

    def base_model(self):
        """(model, params) before any fine-tuning: pretrained here, random, or a checkpoint."""
        cfg = self.cfg
        if "pretrain" in self.stages:
            return loading.load_lm(cfg, self.path("models", "pretrained"))
        if cfg.model.init == "scratch":
            # A seeded random model (runlocal): the same on every call and relaunch.
            model = loading.causal_lm(cfg, len(self.tokenizer))
            key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
            init = lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"]  # noqa: E731
            return model, self.dp.init(init, key)  # one program; on a mesh created split
        if not cfg.model.name_or_path:
            raise ValueError("model.name_or_path is empty and there is no pretrain stage")
        return loading.load_lm(cfg, cfg.model.name_or_path)

    def initial_policy(self):
        """(model, params) the policy starts from and the frozen reference: the SFT
        model when the config has an sft stage (Stiennon), else the base model."""
        if "sft" in self.stages:
            return loading.load_lm(self.cfg, self.path("models", "sft"))
        return self.base_model()

    def reward_model(self):
        """(rm_model, rm_params) the reward stage saved, or None before it ran."""
        path = self.path("models", "reward")
        if not os.path.exists(os.path.join(path, loading.REWARD_PARAMS)):
            return None
        return loading.load_reward_model(self.cfg, path)

    def save_lm(self, name: str, model, params) -> None:
        """`models/<name>/`: a Hugging Face GPT-2 directory with the tokenizer (process 0)."""
        if parallel.process_is_main():
            save_pretrained(model, params, self.path("models", name))
            self.tokenizer.save_pretrained(self.path("models", name))


def setup_tokenizer(ctx: Context) -> None:
    """The tokenizer (trained on the synthetic corpus by process 0, or loaded) and corpus."""
    cfg = ctx.cfg

    if cfg.task.query_dataset == "world_tldr":  # stories, a share ending with their TL;DR
        ctx.corpus = summaries.pretraining_corpus(cfg.pretrain.num_docs, cfg.seed,
                                                  lead=cfg.task.story_lead)
    elif cfg.task.query_dataset == "synthetic" or cfg.model.tokenizer == "synthetic":
        ctx.corpus = synthetic.generate_corpus(cfg.pretrain.num_docs, cfg.seed)
    if cfg.model.tokenizer == "synthetic":
        tok_dir = ctx.path("tokenizer")
        if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
            ctx.tokenizer = load_tokenizer(tok_dir)
        elif parallel.process_is_main():
            ctx.tokenizer = synthetic.train_tokenizer(ctx.corpus, cfg.pretrain.vocab_size, tok_dir)
        else:
            raise RuntimeError("multi-host runs need the tokenizer trained first (process 0)")
    else:
        ctx.tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)


def resolve_task(ctx: Context) -> None:
    """Fills token ids the config leaves to the tokenizer (pad, eos), encodes the
    policy's query prefix and suffix, and checks that the formatted context fits."""
    t = ctx.cfg.task
    # A checkpoint can have more embedding rows than its tokenizer has tokens
    # (Qwen: 151,936 and 151,665); the policy can sample those rows, so the pad
    # lies beyond both.
    rows = len(ctx.tokenizer)
    if ctx.cfg.model.init != "scratch" and "pretrain" not in ctx.stages:
        rows = max(rows, loading.architecture(ctx.cfg)[0].vocab_size)
    ctx.vocab_rows = rows
    with t.unlocked():
        if t.pad_token is None:
            t.pad_token = rows  # outside the vocabulary: never sampled
        if t.eos_token is None:
            t.eos_token = ctx.tokenizer.eos_token_id
    if t.pad_token < rows:
        raise ValueError(f"task.pad_token={t.pad_token} is inside the vocabulary (size "
                         f"{rows}); it must be an id the model can never emit")
    encode = lambda text: tuple(ctx.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    ctx.query_prefix_ids = encode(t.query_prefix) if t.query_prefix else ()
    ctx.query_suffix_ids = encode(t.query_suffix) if t.query_suffix else ()
    n_positions = loading.architecture(ctx.cfg)[0].n_positions
    context = (len(ctx.query_prefix_ids) + t.query_length + len(ctx.query_suffix_ids)
               + t.response_length)
    if context > n_positions:
        raise ValueError(f"task.query_prefix + query_length + query_suffix + response_length = "
                         f"{context} tokens exceed the model's {n_positions} positions")
