"""Ziegler et al. 2019 TL;DR summarisation: 500-token posts, 75-token summaries, fixed KL 0.03.

Every value of the run is below, each with where it comes from: a line of
openai/lm-human-preferences' `launch.py` (LHP), of its trainers, or the
paper. The query is the raw post (its first 500 tokens); the policy reads it
with `\\n\\nTL;DR:` appended, the reward model reads it raw, as LHP's label
files hold it (LHP `lm_tasks.query_formatter` feeds only the policy).
Stiennon's SUBREDDIT/TITLE/POST format is `configs/stiennon_tldr.py`'s.

    python launch.py --config=configs/tldr.py \
        --config.labels.path=/data/lhp/tldr/online_45k.json \
        --config.task.dataset_path=DATA --workdir=runs/tldr
    python launch.py --config=configs/tldr.py:runlocal --workdir=/tmp/tldr   # CPU smoke run

DATA: see README "Data": a directory of {train,valid,test}.jsonl whose records
hold the post in `post` (SFF's tldr_3_filtered works; LHP's own TL;DR subset
is no longer public). Expected: RM score rises at the fixed KL coefficient
0.03; the summaries mostly copy sentences of the post, as the paper reports
(section 4.2; no public learning curves exist for this task). A full run
needs accelerators (1M episodes, 31,250 updates); `:runlocal` takes a minute
or two on a CPU and checks every stage on toy data. Switches: as
`configs/sentiment.py`.
"""

import os

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.name = "tldr"
    c.stages = "labels,reward,ppo,eval,figures"
    c.model.name_or_path = "gpt2"  # launch.py line 46: policy.initial_model '124M'

    t = c.task
    t.name = "tldr"
    t.query_dataset = "tldr"  # launch.py line 38
    t.dataset_path = ""  # a TL;DR posts directory (see DATA above)
    t.query_format = "lhp"  # the raw post (datasets/tldr.py lines 25-29), RM reads it raw
    t.query_length = 500  # launch.py line 39
    t.response_length = 75  # launch.py line 40
    t.query_prefix = ""  # launch.py binds none
    t.query_suffix = "\n\nTL;DR:"  # launch.py line 37, policy only (lm_tasks.py lines 68-80)
    t.start_text = None  # launch.py line 41
    t.end_text = None  # lm_tasks.py line 24 default: the post cut at 500 tokens
    t.truncate_token = 198  # launch.py line 43: '\n'
    t.truncate_after = 55  # launch.py line 42
    t.penalty_reward_value = -1.0  # lm_tasks.py line 32
    t.temperature = 0.7  # launch.py line 45
    t.eos_token = 50256  # GPT-2's <|endoftext|> (sampling never stops at it here)
    t.stop_at_eos = False  # Ziegler: always response_length tokens
    t.pad_token = 50259  # LHP's padding token, outside the vocabulary

    lb = c.labels
    lb.type = "best_of_4"  # launch.py line 51
    lb.source = "file"  # launch.py line 104: LHP's human labels
    lb.format = "lhp"  # LHP label JSON: query, sample0..3, best (label_types.py)
    lb.path = ""  # tldr/online_45k.json of LHP's release (launch.py line 104)
    lb.num_train = 46_000  # launch.py line 105
    lb.num_val = 0  # LHP holds none out
    lb.gold = "none"  # no gold reward for human labels

    r = c.reward
    r.batch_size = 16  # launch.py line 107: 2 * 8
    r.epochs = 1  # train_reward.py lines 245-250
    r.lr = 2.5e-5  # launch.py line 108
    r.schedule = "linear"  # train_reward.py line 249
    r.adam = "tf"  # utils/core.py line 627
    r.adam_eps = 1e-5  # utils/core.py line 627
    r.normalize_before = True  # launch.py line 53
    r.normalize_after = True  # launch.py line 52
    r.normalize_samples = 256  # launch.py line 54: ceil(256 / 128) = 2 batches of 128
    r.normalize_mode = "gain_bias"  # rewards.py lines 77-89
    r.rollout_batch_size = 128  # launch.py line 109
    r.head = "linear"  # rewards.py line 29: one scalar head
    r.reward_at = "last"  # rewards.py line 47

    p = c.ppo
    p.batch_size = 32  # launch.py line 183
    p.total_episodes = 1_000_000  # launch.py line 178: 31,250 updates
    p.lr = 2e-6  # launch.py line 179
    p.nminibatches = 1  # train_policy.py line 50
    p.noptepochs = 4  # train_policy.py line 51
    p.vf_coef = 0.1  # train_policy.py line 53
    p.cliprange = 0.2  # train_policy.py line 54
    p.cliprange_value = 0.2  # train_policy.py line 55
    p.gamma = 1.0  # train_policy.py line 56
    p.lam = 0.95  # train_policy.py line 57
    p.whiten_rewards = False  # launch.py line 184
    # Advantages are still whitened inside LHP's loss, per minibatch and per
    # rank (train_policy.py line 338): with 8 ranks (launch.py line 192) 4 rows each.
    p.whiten_scope = "minibatch"
    p.adam = "tf"  # utils/core.py line 627
    p.adam_eps = 1e-5  # utils/core.py line 627
    p.value_model = "shared"  # policy.py line 28

    k = c.kl
    k.coef = 0.03  # launch.py line 180 ("0.01 too low")
    k.adaptive = False  # launch.py lines 181-182: adaptive KL commented out
    k.target = 6.0  # unused with fixed KL
    k.horizon = 10000  # train_policy.py line 28 (unused with fixed KL)

    c.eval.num_queries = 256  # ours: held-out queries for eval.json
    return config_lib.apply_switches(c, arg, runlocal=_runlocal)


def _runlocal(c):
    """Toy sizes: the TL;DR fixture's posts, mock labels from the VADER gold, a tiny model."""
    c.task.dataset_path = os.path.join(config_lib.fixtures_dir(), "tldr_mini")
    config_lib.runlocal_common(c, query_length=96, response_length=12, truncate_after=4)
