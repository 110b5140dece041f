"""Online label collection during PPO (Ziegler et al. 2019, section 2.3).

Offline labels compare samples of the initial policy; as PPO moves the policy,
the reward model judges samples unlike those it learned from. With
`labels.online.enabled`, before each PPO update whose index is a positive
multiple of `labels.online.every` (round r = update / every), the PPO stage:

1. draws `labels.online.num_queries` training queries (a seeded draw per
   round) and samples K responses to each from the *current* policy at the
   task temperature, post-processed (truncated) as labellers see them;
2. sends them to the labeller: the mock (the gold reward picks, as in the
   labels stage) or people (`label_server.HumanQueue`: the items go to the
   label server's SQLite file and the loop waits, printing how many are
   outstanding);
3. writes the answers to `labels/online_<r>.jsonl`, atomically: the label set
   is now `labels/train.jsonl` plus every round so far;
4. retrains the reward model on the grown set for `labels.online.reward_epochs`
   passes, from the current RM (`retrain="continue"`) or from a fresh head on
   the initial policy (`"reinit"`, Ziegler's choice), normalised as the reward
   stage is, checkpointed under `online/round_<r>/checkpoints/reward` with its
   metrics in `online/round_<r>/metrics.jsonl`;
5. saves it to `online/round_<r>/reward/`, logs one `online` metrics row at the
   update (labels collected and used, RM loss / accuracy, and for the mock
   how often the labelled best has the highest gold reward), and PPO
   carries on against the new RM.

When the label count is not a multiple of `reward.batch_size` (people skipped
items), the oldest labels beyond the last full batch sit out that retrain.

Resuming: the PPO stage checkpoints right before each collection, so a run
stopped anywhere in a round (SIGTERM while people label, a kill during the
retrain) resumes from that checkpoint and redoes only what is missing. The
request is saved before it is sent (`online/round_<r>/request.npz`), the human
queue finds its items and answers already in the database, the label file
marks the labels as collected, the retrain resumes from its checkpoint, and
`online/round_<r>/done.json` marks the round done. A resumed run ends with the
same metrics as an uninterrupted one. Single process only (`config_check.resolve`
checks).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from rlhf_jax.config_check import num_updates
from rlhf_jax.data import label_files as label_files_lib, labels as labels_lib
from rlhf_jax.infra import parallel
from rlhf_jax.infra.files import savez_atomic, write_json_atomic
from rlhf_jax.infra.metrics import MetricsWriter
from rlhf_jax.labelling import spans
from rlhf_jax.labelling.label_server.queue import HumanQueue, LabelingStopped
from rlhf_jax.labelling.labelers import LabelRequest, make_gold, MockLabeler
from rlhf_jax.models import loading
from rlhf_jax.stages import reward, reward_train
from rlhf_jax.stages.batched import postprocess, sample_responses
from rlhf_jax.stages.context import Context, stage_key

STAGE = "online"
# Fold-in constants: the policy samples and the retrain of round r.
_SAMPLE_STREAM, _RETRAIN_STREAM = 0x6F6E, 0x726D


def _log(text: str) -> None:
    if parallel.process_is_main():
        print(text, flush=True)


def _for_concatenation(labels: labels_lib.Labels, keep_spans: bool) -> labels_lib.Labels:
    """Drops the gold rewards (and span marks unless every part has them) and
    names every labeller, so offline, mock and human label sets join
    (`Labels.concatenate` needs equal optional fields)."""
    names = labels.labeler_N if labels.labeler_N is not None else np.full(len(labels), "")
    return dataclasses.replace(labels, gold_NxK=None, labeler_N=names,
                               span_mask_NxKxR=labels.span_mask_NxKxR if keep_spans else None)


class OnlineCollector:
    """Collects labels from the current policy and retrains the RM between PPO updates.

    The PPO trainer calls `start(update)` once (the RM to use from there) and,
    before each update, `collect(update, params, should_stop)` when
    `due(update)`.

    Args:
      ctx: the pipeline context (config, workdir, devices, tokenizer, writer).
      policy_model: the policy's language model (`models.causal_lm`) to sample from.
      rm_model, rm_params: the reward model the PPO stage starts with (the
        reward stage's).
    """

    def __init__(self, ctx: Context, *, policy_model, rm_model, rm_params):
        cfg = ctx.cfg
        self.ctx, self.cfg, self.online = ctx, cfg, cfg.labels.online
        self.kind, self.k = labels_lib.parse_label_type(cfg.labels.type)
        self.policy_model = policy_model
        self.rm_model = rm_model
        self.initial_rm_params = rm_params
        self.rm_params = rm_params
        self.num_updates = num_updates(cfg.ppo)
        self._mock = None

    # -- where things live ------------------------------------------------------

    def round_dir(self, r: int) -> str:
        return self.ctx.path("online", f"round_{r:04d}")

    def labels_path(self, r: int) -> str:
        return self.ctx.path("labels", f"online_{r:04d}.jsonl")

    def _done_path(self, r: int) -> str:
        return os.path.join(self.round_dir(r), "done.json")

    def _rm_dir(self, r: int) -> str:
        return os.path.join(self.round_dir(r), "reward")

    # -- the trainer's interface --------------------------------------------------

    def due(self, update: int) -> bool:
        """Whether a round runs before update `update` (0-based)."""
        return 0 < update < self.num_updates and update % self.online.every == 0

    def start(self, update: int):
        """The RM params PPO uses from `update` on (the newest finished round's).

        Also drops `online` metric rows a stopped run logged past the point it
        resumes from, so none is written twice.
        """
        last = update // self.online.every
        keep_through = update if not self.due(update) or os.path.exists(
            self._done_path(last)) else update - 1
        self.ctx.writer.resume(STAGE, keep_through)
        self.rm_params = self.initial_rm_params
        for r in range(last, 0, -1):
            if os.path.exists(self._done_path(r)):
                self.rm_params = loading.load_reward_model(self.cfg, self._rm_dir(r))[1]
                break
        return self.rm_params

    def collect(self, update: int, ppo_params, should_stop: Callable[[], bool]):
        """Runs (or finishes) the round before update `update`; the new RM params.

        `ppo_params` are the PPO state's params (`{"policy": ...}`). Returns
        None when `should_stop()` turned true (SIGTERM): the round resumes on
        relaunch.
        """
        r = update // self.online.every
        if os.path.exists(self._done_path(r)):
            self.rm_params = loading.load_reward_model(self.cfg, self._rm_dir(r))[1]
            return self.rm_params
        os.makedirs(self.round_dir(r), exist_ok=True)
        t0 = time.time()
        if not os.path.exists(self.labels_path(r)):
            request = self._request(r, ppo_params)
            labeler = self._labeler(r, should_stop)
            _log(f"online | round {r} before update {update + 1}: {len(request)} queries x "
                 f"{self.k} responses -> {self.online.labeler} labeller")

            try:
                new = labeler.label(request)
            except LabelingStopped as e:
                _log(f"online | round {r}: {e}; relaunch the same command to resume")
                return None
            if self.cfg.labels.spans.enabled and len(new):  # people's marks are kept as given

                new = spans.mark_unmarked(self.cfg, self.ctx.decode, new)
            label_files_lib.write_labels_jsonl(self.labels_path(r), new)
        if should_stop():
            return None
        return self._retrain(r, update, should_stop, t0)

    # -- the round's pieces ---------------------------------------------------------

    def _request(self, r: int, ppo_params):
        """The round's label request: saved before it is sent, reloaded on resume."""
        cfg, ctx = self.cfg, self.ctx
        path = os.path.join(self.round_dir(r), "request.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                arrays = {name: z[name] for name in z.files}
        else:
            qs = ctx.queries("train")
            n = self.online.num_queries
            if n > len(qs):
                raise ValueError(f"labels.online.num_queries={n} exceeds the {len(qs)} "
                                 "training queries")
            rows = np.random.default_rng([cfg.seed, _SAMPLE_STREAM, r]).choice(
                len(qs), size=n, replace=False)
            q, m = qs.query_NxQ[rows], qs.query_mask_NxQ[rows]
            lm_params = {"transformer": ppo_params["policy"]["transformer"]}
            key = jax.random.fold_in(jax.random.fold_in(stage_key(cfg, "ppo"), _SAMPLE_STREAM),
                                     r)
            # K copies of the queries in one call (one compile); rows j*n + i hold
            # response j to query i, each row with its own key.
            raw, _ = sample_responses(ctx, self.policy_model, lm_params,
                                      np.tile(q, (self.k, 1)), np.tile(m, (self.k, 1)),
                                      key, cfg.labels.batch_size)
            processed, pmask = postprocess(ctx, raw)
            arrays = {"query": q, "query_mask": m,
                      "responses": processed.reshape(self.k, n, -1).transpose(1, 0, 2),
                      "response_mask": pmask.reshape(self.k, n, -1).transpose(1, 0, 2)}
            savez_atomic(path, **arrays)
        return LabelRequest.from_tokens(arrays["query"], arrays["query_mask"],
                                        arrays["responses"], arrays["response_mask"],
                                        pad_token=cfg.task.pad_token, decode=ctx.decode)

    def _labeler(self, r: int, should_stop):
        cfg, ctx, o = self.cfg, self.ctx, self.online
        if o.labeler == "human":
            return HumanQueue(o.db, label_type=cfg.labels.type, decode=ctx.decode,
                              poll_seconds=o.poll_seconds, max_skips=o.max_skips,
                              should_stop=should_stop, log=_log,
                              name=f"{os.path.basename(os.path.abspath(ctx.workdir))}/"
                                   f"round_{r:04d}")
        if self._mock is None:
            gold = make_gold(cfg.labels.gold,
                             ungrammatical_penalty=cfg.labels.ungrammatical_penalty)
            self._mock = MockLabeler(gold, label_type=self.kind,
                                     noise=cfg.labels.mock_noise, seed=cfg.seed)
        return self._mock

    def _read(self, path: str) -> labels_lib.Labels:
        cfg = self.cfg
        return label_files_lib.read_labels_jsonl(
            path, query_length=cfg.task.query_length, response_length=cfg.task.response_length,
            pad_token=cfg.task.pad_token, vocab_size=self.ctx.vocab_rows,
            label_type=self.kind)

    def _label_set(self, r: int):
        """(offline + rounds 1..r, held-out set or None, this round's labels or None)."""
        parts = [self._read(self.ctx.path("labels", "train.jsonl"))]
        new = None
        for i in range(1, r + 1):
            path = self.labels_path(i)
            if os.path.getsize(path) == 0:  # everything was skipped
                continue
            labels = self._read(path)
            parts.append(labels)
            if i == r:
                new = labels
        val_path = self.ctx.path("labels", "val.jsonl")
        val = self._read(val_path) if os.path.exists(val_path) else None
        keep_spans = all(p.span_mask_NxKxR is not None for p in parts)
        return (labels_lib.Labels.concatenate([_for_concatenation(p, keep_spans) for p in parts]),
                val, new)

    def _retrain(self, r: int, update: int, should_stop, t0: float):
        cfg, ctx, o = self.cfg, self.ctx, self.online
        grown, val, new = self._label_set(r)
        bs = cfg.reward.batch_size
        n_total = len(grown)
        n_used = n_total // bs * bs
        # The oldest labels beyond the last full batch sit this retrain out.
        train = grown.subset(np.arange(n_total - n_used, n_total))
        rcfg = cfg.copy_and_resolve_references()
        rcfg.labels.num_train = n_used
        rcfg.reward.epochs = o.reward_epochs
        policy_model, policy_params = ctx.initial_policy()
        if o.retrain == "reinit":
            rm_model, start = loading.init_reward_model(
                cfg, jax.random.fold_in(stage_key(cfg, "reward"), r), policy_model,
                policy_params)
        else:
            rm_model, start = self.rm_model, self.rm_params
        _log(f"online | round {r}: {0 if new is None else len(new)} new labels, "
             f"{n_total} in all; retraining the reward model on {n_used}")
        writer = MetricsWriter(self.round_dir(r), tensorboard=cfg.log.tensorboard)
        try:
            params, summary = reward_train.train_reward_model(
                rcfg, rm_model=rm_model, rm_params=start, train=train, val=val, dp=ctx.dp,
                rng=jax.random.fold_in(jax.random.fold_in(stage_key(cfg, "reward"),
                                                          _RETRAIN_STREAM), r),
                workdir=self.round_dir(r), writer=writer,
                normalizer=reward.reference_normalizer(ctx, policy_model, policy_params))
        finally:
            writer.close()
        if summary.get("stopped_early") or should_stop():
            return None
        if parallel.process_is_main():
            loading.save_reward_model(self._rm_dir(r), rm_model, params)
        row = {f"{STAGE}/round": r, f"{STAGE}/labels_new": 0 if new is None else len(new),
               f"{STAGE}/labels_total": n_total, f"{STAGE}/labels_used": n_used}
        for name, value in (summary.get("train") or {}).items():
            if name != "lr":
                row[f"{STAGE}/reward/{name}"] = value
        for name, value in (summary.get("final_val") or {}).items():
            row[f"{STAGE}/reward/{name}"] = value
        if new is not None and new.gold_NxK is not None and new.best_N is not None:
            # How often the labelled best has the highest gold reward, ties
            # included (1.0 for a noiseless mock; VADER ties often).
            best_gold_N = np.take_along_axis(new.gold_NxK, new.best_N[:, None], 1)[:, 0]
            row[f"{STAGE}/best_is_gold_max"] = float(
                np.mean(best_gold_N == new.gold_NxK.max(1)))
        ctx.writer.write(update, STAGE, row)
        if parallel.process_is_main():
            write_json_atomic(self._done_path(r), {"update": update, **row})
        _log(f"online | round {r} done: " + " | ".join(
            f"{k.split('/', 1)[1]} {v:.4g}" for k, v in row.items())
            + f" | {time.time() - t0:.0f}s")
        self.rm_model, self.rm_params = rm_model, jax.device_get(params)
        return self.rm_params
