"""Ziegler et al. 2019 sentiment (books, human labels): continuations people judged positive.

Every value of the run is below, each with where it comes from: a line of
openai/lm-human-preferences' `launch.py` (LHP), of its trainers, or the
paper. GPT-2 124M from the hub, best-of-4 labels from LHP's released file,
the reward model normalised before and after training, PPO with adaptive KL.

    python launch.py --config=configs/sentiment.py \
        --config.labels.path=/data/lhp/sentiment/offline_5k.json \
        --config.task.dataset_path=DATA --workdir=runs/sentiment
    python launch.py --config=configs/sentiment.py:runlocal --workdir=/tmp/sentiment  # CPU smoke
    python -m rlhf_jax.stages.figures runs/sentiment --reference lhp_sentiment   # against LHP's runs

DATA: see README "Data" (a local text file with one passage per line, or the
Hugging Face `bookcorpus`: LHP's own book passages are no longer public).
Expected (the published reproduction of LHP's runs, GPT-2 124M, 10 seeds;
`rlhf_jax/experiments/references/lhp_sentiment.csv`): at the end of the 1,954 updates
`objective/score` about 1.8, `objective/kl` held at the target 6 nats,
`objective/kl_coef` risen from 0.15 to about 0.25. A full run needs
accelerators (1M episodes); `:runlocal` takes a minute or two on a CPU and
checks every stage on toy data. Switches: value=shared|separate, loss=bo4|bt,
kl=adaptive|fixed|off, whiten=on|off, adam=tf|torch, head=linear|scalar_mix,
reward=rm|gold.
"""

import os

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.name = "sentiment"
    c.stages = "labels,reward,ppo,eval,figures"
    c.model.name_or_path = "gpt2"  # launch.py line 18: policy.initial_model '124M'

    t = c.task
    t.name = "sentiment"
    t.query_dataset = "books"  # launch.py line 10
    t.dataset_path = "bookcorpus"  # LHP's book_passages are gone; the reproductions used this
    t.query_format = "lhp"  # lm_tasks.py lines 68-80: the RM reads the raw query
    t.query_length = 64  # launch.py line 9
    t.response_length = 24  # launch.py line 11
    t.query_prefix = ""  # books_task binds none (lm_tasks.py line 21 default)
    t.query_suffix = ""  # lm_tasks.py line 22 default
    t.start_text = "."  # launch.py line 12: start after a sentence end
    t.end_text = "."  # launch.py line 13: end at one
    t.truncate_token = 13  # launch.py line 14: '.'
    t.truncate_after = 16  # launch.py line 15: responses at least 16 tokens
    t.penalty_reward_value = -1.0  # lm_tasks.py line 32: no '.' after token 16
    t.temperature = 0.7  # launch.py line 17
    t.eos_token = 50256  # GPT-2's <|endoftext|> (sampling never stops at it here)
    t.stop_at_eos = False  # Ziegler: always response_length tokens
    t.pad_token = 50259  # LHP's padding token, outside the vocabulary

    lb = c.labels
    lb.type = "best_of_4"  # launch.py line 51
    lb.source = "file"  # launch.py line 69: LHP's human labels
    lb.format = "lhp"  # LHP label JSON: query, sample0..3, best (label_types.py)
    lb.path = ""  # sentiment/offline_5k.json of LHP's release (launch.py line 69)
    lb.num_train = 4_992  # launch.py line 70
    lb.num_val = 0  # LHP holds none out
    lb.gold = "none"  # no gold reward for human labels

    r = c.reward
    r.batch_size = 32  # launch.py line 61
    r.epochs = 1  # train_reward.py lines 245-250: one pass
    r.lr = 5e-5  # launch.py line 62
    r.schedule = "linear"  # train_reward.py line 249: linear to 0 over the labels
    r.adam = "tf"  # utils/core.py line 627: tf.train.AdamOptimizer
    r.adam_eps = 1e-5  # utils/core.py line 627
    r.normalize_before = True  # launch.py line 53
    r.normalize_after = True  # launch.py line 52
    r.normalize_samples = 256  # launch.py line 54: ceil(256 / 512) = 1 batch of 512 samples
    r.normalize_mode = "gain_bias"  # rewards.py lines 77-89
    r.rollout_batch_size = 512  # launch.py line 63
    r.head = "linear"  # rewards.py line 29: one scalar head
    r.reward_at = "last"  # rewards.py line 47: reward[:, -1]

    p = c.ppo
    p.batch_size = 512  # launch.py line 124
    p.total_episodes = 1_000_000  # launch.py line 123: ceil(1M / 512) = 1,954 updates
    p.lr = 1e-5  # launch.py line 122, linear to 0 (train_policy.py lines 172-173)
    p.nminibatches = 1  # train_policy.py line 50
    p.noptepochs = 4  # train_policy.py line 51
    p.vf_coef = 0.1  # train_policy.py line 53
    p.cliprange = 0.2  # train_policy.py line 54
    p.cliprange_value = 0.2  # train_policy.py line 55
    p.gamma = 1.0  # train_policy.py line 56
    p.lam = 0.95  # train_policy.py line 57
    p.whiten_rewards = True  # train_policy.py line 58
    # LHP's own scheme (train_policy.py lines 324-338): rewards and advantages
    # whitened per minibatch and per rank. LHP ran 8 MPI ranks (launch.py line
    # 192), so 8 devices reproduce its arithmetic exactly; on D devices each
    # whitening spans 512 / D rows.
    p.whiten_scope = "minibatch"
    p.adam = "tf"  # utils/core.py line 627
    p.adam_eps = 1e-5  # utils/core.py line 627
    p.value_model = "shared"  # policy.py line 28: a value head on the policy's trunk

    k = c.kl
    k.coef = 0.15  # launch.py line 129
    k.adaptive = True  # launch.py line 130
    k.target = 6.0  # launch.py line 131
    k.horizon = 10000  # train_policy.py line 28

    c.eval.num_queries = 256  # ours: held-out queries for eval.json
    return config_lib.apply_switches(c, arg, runlocal=_runlocal)


def _runlocal(c):
    """Toy sizes: the books fixture, mock labels from the VADER gold, a tiny model."""
    c.task.dataset_path = os.path.join(config_lib.fixtures_dir(), "books_mini.txt")
    config_lib.runlocal_common(c, query_length=24, response_length=12, truncate_after=4)
    # 8 rows per device's minibatch on 4 devices: LHP's floor for per-minibatch
    # reward whitening (train_policy.py lines 459-462).
    c.ppo.batch_size = 32
    c.ppo.total_episodes = 32 * 3
