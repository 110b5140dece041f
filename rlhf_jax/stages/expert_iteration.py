"""Best-of-N then SFT on the chosen samples (expert iteration; the `bon_sft` stage).

Best-of-N sampling (`rollout.make_best_of_n`) is a strong baseline at a
KL of `log N - (N-1)/N`, but it costs N samples at every use. Expert
iteration distils it: sample `bon_sft.n` responses to each of
`bon_sft.num_queries` training queries from the current policy, keep the one
the reward model scores highest (after post-processing and the truncation
penalty, as PPO's score), and fine-tune the policy on those (query, chosen
response) pairs with the SFT loss on the response tokens. `bon_sft.rounds`
repeats sample-select-train, each round sampling fresh queries from the
latest policy. No RL, no value model, no KL penalty: the KL stays small only
because the targets are the policy's own samples.

Sampling runs data-parallel on the device (`batched.best_of_n`, the eval's
best-of-N step); the SFT rounds use the shared loop (`rlhf_jax.stages.supervised`),
each with its own checkpoints (`checkpoints/bon_sft`, `bon_sft_r2`, ...), so a
relaunch resumes mid-round and recomputes only the (deterministic) samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.stages import sft, supervised
from rlhf_jax.stages.batched import best_of_n
from rlhf_jax.stages.rollout import PPOModels, TaskSpec


def train_bon_sft(cfg, *, task: TaskSpec, model, params, rm_model, rm_params, queries, dp,
                  rng, workdir: str | None = None, writer=None) -> tuple[Any, dict]:
    """Expert iteration from `params`; returns `(params, summary)`.

    Config fields read: bon_sft.n, bon_sft.num_queries, bon_sft.rounds and the
    SFT loop's bon_sft.{batch_size, epochs, lr, schedule, adam, adam_eps,
    log_every, eval_every, checkpoint_every}; parallel.mode. `task` is the
    rollout's `TaskSpec` (the policy samples after its formatted queries and is
    fine-tuned on them); `queries` is the training `QueryDataset` (raw
    queries, as the RM reads them); round r uses its batch r-1 of `num_queries`.

    Metrics per round r (stage `bon_sft` for round 1, `bon_sft_r<r>` after):
    `<stage>/loss` (SFT NLL per chosen token) and `<stage>/chosen_score` (the
    mean RM score of the chosen samples).
    """
    b = cfg.bon_sft
    models = PPOModels(policy=model, reference=model, reward=rm_model)
    base_loop = LoopConfig.from_config(cfg, "bon_sft")
    summary: dict[str, Any] = {}
    for r in range(1, b.rounds + 1):
        stage = "bon_sft" if r == 1 else f"bon_sft_r{r}"
        rows = queries.indices(r - 1, b.num_queries)
        q, m = queries.query_NxQ[rows], queries.query_mask_NxQ[rows]
        best, chosen = best_of_n(dp, models, task, b.n, params, rm_params, q, m,
                                 jax.random.fold_in(rng, r), b.batch_size)
        policy_q, policy_m = (np.asarray(x) for x in task.policy_queries(q, m))
        data = sft.SFTData(policy_q, policy_m, best, (best != task.pad_token).astype(np.int32))
        params, out = sft.train_causal_lm(
            cfg, dataclasses.replace(base_loop, stage=stage), "response", model=model,
            params=params, train=data, val=None, dp=dp, rng=jax.random.fold_in(rng, 1000 + r),
            workdir=workdir, writer=writer)
        out["chosen_score"] = float(np.mean(chosen))
        if writer is not None:
            writer.write(out.get("steps", 0), stage, {f"{stage}/chosen_score": out["chosen_score"]})
        supervised.log_line(f"{stage}: round {r}/{b.rounds}, best of {b.n} on {len(q)} queries, "
                            f"chosen RM score {out['chosen_score']:.3f}")
        summary[stage] = out
        if out.get("stopped_early"):
            summary["stopped_early"] = True
            break
    return params, summary
