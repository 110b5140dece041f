"""Stiennon et al. 2020, "Learning to summarize from human feedback": TL;DR.

SFT on the reference summaries -> a pairwise (Bradley-Terry) reward model on
the SFF human comparisons, read at EOS, normalised with a bias so reference
summaries score 0 -> PPO with a separate value network initialised from the
reward model, fixed KL 0.05, responses stopped, masked and scored at EOS.
Policy, reward model and reference all start from the SFT model
(PAPER_DETAILS items 5, 10-14, 16, 28-29).

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
    c.stages = "sft,labels,reward,ppo,eval,figures"
    c.model.name_or_path = "gpt2-xl"

    t = c.task
    t.name = "tldr"
    t.query_dataset = "tldr"
    t.dataset_path = ""  # SFF tldr_3_filtered directory (train/valid/test.jsonl)
    t.query_length = 512
    t.response_length = 48
    t.query_prefix = ""
    t.query_suffix = ""  # the SFF format ends with "TL;DR:" itself
    t.start_text = None
    t.end_text = None
    t.truncate_token = None  # Stiennon stops at EOS instead
    t.penalty_reward_value = None
    t.temperature = 0.7
    t.eos_token = 50256
    t.stop_at_eos = True

    c.sft.batch_size = 128
    c.sft.lr = 6.35e-5
    c.sft.schedule = "cosine"
    c.sft.num_train = 116_722 // 128 * 128  # tldr_3_filtered train, whole batches

    c.labels.type = "pairwise"
    c.labels.source = "file"
    c.labels.format = "sff"
    c.labels.path = ""  # SFF comparisons jsonl
    c.labels.num_train = 92_832 // 64 * 64
    c.labels.num_val = 0
    c.labels.gold = "none"

    c.reward.batch_size = 64
    c.reward.lr = 1.5e-5
    c.reward.schedule = "cosine"
    c.reward.adam = "torch"
    c.reward.reward_at = "eos"
    c.reward.normalize_before = False
    c.reward.normalize_after = True
    c.reward.normalize_mode = "bias_only"  # reference summaries score mean 0
    c.reward.normalize_samples = 2048

    c.ppo.batch_size = 512
    c.ppo.nminibatches = 4
    c.ppo.noptepochs = 4
    c.ppo.lr = 1.5e-5
    c.ppo.adam = "torch"
    c.ppo.total_episodes = 1_000_000
    c.ppo.value_model = "separate"  # initialised from the reward model
    c.ppo.whiten_rewards = False

    c.kl.coef = 0.05
    c.kl.adaptive = False

    c.eval.num_queries = 512
    c.eval.best_of_n = (1, 4, 16)
    return config_lib.apply_switches(c, arg, runlocal=_runlocal)


def _runlocal(c):
    c.task.dataset_path = os.path.join(config_lib.fixtures_dir(), "tldr_mini")
    c.labels.type = "pairwise"
    config_lib.runlocal_common(c, query_length=96, response_length=12)
    c.task.temperature = 0.7
    c.reward.normalize_samples = 32
    c.ppo.nminibatches = 2
    c.eval.best_of_n = (1, 2)
