"""Stiennon et al. 2020, "Learning to summarize from human feedback": TL;DR.

SFT on the reference summaries -> a pairwise (Bradley-Terry) reward model on
the SFF human comparisons, read at EOS, normalised with a bias so reference
summaries score 0 -> PPO with a separate value network initialised from the
reward model, fixed KL 0.05, responses stopped, masked and scored at EOS.
Policy, reward model and reference all start from the SFT model
(docs/implementation_details.md items 5, 10-14, 16, 28-29).

    python launch.py --config=configs/stiennon_tldr.py \
        --config.task.dataset_path=/data/tldr_3_filtered \
        --config.labels.path=/data/comparisons/train.jsonl \
        --config.labels.val_path=/data/comparisons/valid.jsonl --workdir=runs/stiennon
    python launch.py --config=configs/stiennon_tldr.py:runlocal --workdir=/tmp/st  # CPU smoke

Data: SFF's TL;DR posts (`tldr_3_filtered/{train,valid,test}.jsonl`: id,
subreddit, title, post, summary) and comparisons (`comparisons/*.jsonl`);
see README "Data". Model: the paper's 1.3B and 6.7B are not public; the
default is GPT-2 XL (1.5B, the closest public GPT-2), and `model.name_or_path`
takes any GPT-2-architecture checkpoint. Expected: RM validation accuracy
around 0.65-0.7 at this scale, PPO summaries preferred by the RM over SFT's
at a KL of a few nats. Needs accelerators (1M episodes); `:runlocal` runs
every stage on toy data in a couple of minutes.
"""

import os

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.name = "stiennon_tldr"
    c.stages = "sft,labels,reward,ppo,eval,figures"  # Stiennon section 3.4: SFT, RM, RL
    c.model.name_or_path = "gpt2-xl"  # ours: the paper's 1.3B / 6.7B models are not public

    t = c.task
    t.name = "tldr"
    t.query_dataset = "tldr"  # SFF experiment_helpers.py line 200: tldr_3_filtered
    t.dataset_path = ""  # SFF tldr_3_filtered directory (train/valid/test.jsonl)
    # SFF experiment_helpers.py lines 197-199: SUBREDDIT/TITLE/POST ending "TL;DR:",
    # read by policy and reward model alike; the post cut at newlines (line 203).
    t.query_format = "sff"
    t.query_length = 512  # SFF experiment_helpers.py line 201
    t.response_length = 48  # SFF experiment_helpers.py line 202
    t.start_text = None  # no LHP query extraction: the SFF template
    t.end_text = None  # the post is cut at newlines instead (line 203)
    t.truncate_token = None  # no LHP truncation: summaries end at EOS (line 206)
    t.penalty_reward_value = None  # no truncation token, no penalty
    t.temperature = 0.7  # the N+ reproduction's (Huang et al. 2024)
    t.eos_token = 50256  # SFF experiment_helpers.py line 206: endoftext
    t.stop_at_eos = True  # stop, mask and score at EOS

    c.sft.batch_size = 128  # Stiennon appendix B: batch 128, one epoch
    c.sft.lr = 6.35e-5  # Stiennon appendix B
    c.sft.schedule = "cosine"  # Stiennon appendix B
    c.sft.num_train = 116_722 // 128 * 128  # tldr_3_filtered train (appendix A), whole batches

    c.labels.type = "pairwise"  # Stiennon section 3.4: comparisons of two summaries
    c.labels.source = "file"  # SFF's released human comparisons
    c.labels.format = "sff"  # SFF comparisons jsonl (info, summaries, choice)
    c.labels.path = ""  # SFF comparisons jsonl
    c.labels.num_train = 92_832 // 64 * 64  # the released TL;DR train comparisons, whole batches
    c.labels.num_val = 0  # ours: validation comes from labels.val_path
    c.labels.gold = "none"  # no gold reward for human labels

    c.reward.batch_size = 64  # Stiennon appendix B: batch 64, one epoch
    c.reward.lr = 1.5e-5  # Stiennon appendix B
    c.reward.schedule = "cosine"  # Stiennon appendix B
    c.reward.adam = "torch"  # SFF is PyTorch
    c.reward.reward_at = "eos"  # the reward of the whole summary, read at its EOS
    c.reward.normalize_before = False  # Stiennon section 3.4: only a bias, after training
    c.reward.normalize_after = True  # so that the reference summaries score 0 on average
    c.reward.normalize_mode = "bias_only"  # Stiennon section 3.4: reference summaries score 0
    c.reward.normalize_samples = 2048  # ours: reference summaries for the bias

    c.ppo.batch_size = 512  # Stiennon appendix B: 512 for 1.3B (256 for 6.7B)
    c.ppo.nminibatches = 4  # ours: minibatches of 128
    c.ppo.noptepochs = 4  # Stiennon appendix B: 4 epochs per batch
    c.ppo.lr = 1.5e-5  # Stiennon appendix B
    c.ppo.adam = "torch"  # SFF is PyTorch
    c.ppo.total_episodes = 1_000_000  # Stiennon appendix B: 1M episodes
    c.ppo.value_model = "separate"  # Stiennon section 3.4: a value network from the RM
    c.ppo.whiten_rewards = False  # ours: Stiennon states no reward whitening
    # SFF released no PPO code; one whitening over the global batch keeps the
    # result independent of the device count (LHP's per-minibatch scheme would
    # whiten each of the 4 minibatches per device alone).
    c.ppo.whiten_scope = "global"

    c.kl.coef = 0.05  # Stiennon appendix B: beta = 0.05
    c.kl.adaptive = False  # Stiennon appendix B: a fixed beta

    c.eval.num_queries = 512  # ours
    c.eval.best_of_n = (1, 4, 16)  # ours
    return config_lib.apply_switches(c, arg, runlocal=_runlocal)


def _runlocal(c):
    """Toy sizes: the TL;DR fixture, mock pairwise labels from the VADER gold, a tiny model."""
    c.task.dataset_path = os.path.join(config_lib.fixtures_dir(), "tldr_mini")
    c.labels.type = "pairwise"
    config_lib.runlocal_common(c, query_length=96, response_length=12)
    c.task.temperature = 0.7
    c.reward.normalize_samples = 32
    c.ppo.nminibatches = 2
    c.eval.best_of_n = (1, 2)
