"""Ziegler et al. 2019 CNN/DailyMail summarisation: 500-token articles, fixed KL 0.01, T = 0.5.

Every value of the run is below, each with where it comes from: a line of
openai/lm-human-preferences' `launch.py` (LHP), of its trainers, or the
paper. The query is the raw article (its first 500 tokens, cut back to the
last newline); the policy reads `Article:\\n\\n` + article + `\\n\\nTL;DR:`,
the reward model reads the article raw, as LHP's label files hold it.

    python launch.py --config=configs/cnndm.py \
        --config.labels.path=/data/lhp/cnndm/online_45k.json \
        --config.task.dataset_path=DATA --workdir=runs/cnndm
    python launch.py --config=configs/cnndm.py:runlocal --workdir=/tmp/cnndm   # CPU smoke run

DATA: see README "Data": a directory of {train,valid,test}.jsonl with
`article` and `highlights`, or the Hugging Face `cnn_dailymail`. Expected: RM
score rises at the fixed KL coefficient 0.01; the summaries are mostly
extractive, as the paper reports (section 4.2; no public learning curves
exist for this task). A full run needs accelerators (1M episodes, 31,250
updates); `:runlocal` takes a minute or two on a CPU and checks every stage
on toy data. Switches: as `configs/sentiment.py`.
"""

import os

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.name = "cnndm"
    c.stages = "labels,reward,ppo,eval,figures"
    c.model.name_or_path = "gpt2"  # launch.py line 33: policy.initial_model '124M'

    t = c.task
    t.name = "cnndm"
    t.query_dataset = "cnndm"  # launch.py line 25
    t.dataset_path = "cnn_dailymail"  # LHP's own article cache is not public
    t.query_format = "lhp"  # the raw article (datasets/cnndm.py lines 96-103), RM reads it raw
    t.query_length = 500  # launch.py line 26: the article's tokens
    t.response_length = 75  # launch.py line 27
    t.query_prefix = "Article:\n\n"  # launch.py line 22, policy only (lm_tasks.py lines 68-80)
    t.query_suffix = "\n\nTL;DR:"  # launch.py line 23, policy only
    t.start_text = None  # launch.py line 28
    t.end_text = "\n"  # launch.py line 24: cut back to the last newline
    t.truncate_token = 198  # launch.py line 30: '\n'
    t.truncate_after = 55  # launch.py line 29
    t.penalty_reward_value = -1.0  # lm_tasks.py line 32
    t.temperature = 0.5  # launch.py line 32
    t.eos_token = 50256  # GPT-2's <|endoftext|> (sampling never stops at it here)
    t.stop_at_eos = False  # Ziegler: always response_length tokens
    t.pad_token = 50259  # LHP's padding token, outside the vocabulary

    lb = c.labels
    lb.type = "best_of_4"  # launch.py line 51
    lb.source = "file"  # launch.py line 89: LHP's human labels
    lb.format = "lhp"  # LHP label JSON: query, sample0..3, best (label_types.py)
    lb.path = ""  # cnndm/online_45k.json of LHP's release (launch.py line 89)
    lb.num_train = 46_000  # launch.py line 90
    lb.num_val = 0  # LHP holds none out
    lb.gold = "none"  # no gold reward for human labels

    r = c.reward
    r.batch_size = 16  # launch.py line 92: 2 * 8
    r.epochs = 1  # train_reward.py lines 245-250
    r.lr = 2.5e-5  # launch.py line 93
    r.schedule = "linear"  # train_reward.py line 249
    r.adam = "tf"  # utils/core.py line 627
    r.adam_eps = 1e-5  # utils/core.py line 627
    r.normalize_before = True  # launch.py line 53
    r.normalize_after = True  # launch.py line 52
    r.normalize_samples = 256  # launch.py line 54: ceil(256 / 128) = 2 batches of 128
    r.normalize_mode = "gain_bias"  # rewards.py lines 77-89
    r.rollout_batch_size = 128  # launch.py line 94
    r.head = "linear"  # rewards.py line 29: one scalar head
    r.reward_at = "last"  # rewards.py line 47

    p = c.ppo
    p.batch_size = 32  # launch.py line 165
    p.total_episodes = 1_000_000  # launch.py line 160: 31,250 updates
    p.lr = 2e-6  # launch.py line 161
    p.nminibatches = 1  # train_policy.py line 50
    p.noptepochs = 4  # train_policy.py line 51
    p.vf_coef = 0.1  # train_policy.py line 53
    p.cliprange = 0.2  # train_policy.py line 54
    p.cliprange_value = 0.2  # train_policy.py line 55
    p.gamma = 1.0  # train_policy.py line 56
    p.lam = 0.95  # train_policy.py line 57
    p.whiten_rewards = False  # launch.py line 166
    # Advantages are still whitened inside LHP's loss, per minibatch and per
    # rank (train_policy.py line 338): with 8 ranks (launch.py line 192) 4 rows each.
    p.whiten_scope = "minibatch"
    p.adam = "tf"  # utils/core.py line 627
    p.adam_eps = 1e-5  # utils/core.py line 627
    p.value_model = "shared"  # policy.py line 28

    k = c.kl
    k.coef = 0.01  # launch.py line 162
    k.adaptive = False  # launch.py lines 163-164: adaptive KL commented out
    k.target = 6.0  # unused with fixed KL
    k.horizon = 10000  # train_policy.py line 28 (unused with fixed KL)

    c.eval.num_queries = 256  # ours: held-out queries for eval.json
    return config_lib.apply_switches(c, arg, runlocal=_runlocal)


def _runlocal(c):
    """Toy sizes: the CNN/DM fixture's articles, mock labels from the VADER gold, a tiny model."""
    c.task.dataset_path = os.path.join(config_lib.fixtures_dir(), "cnndm_mini")
    config_lib.runlocal_common(c, query_length=96, response_length=12, truncate_after=4)
