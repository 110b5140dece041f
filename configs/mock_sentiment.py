"""Ziegler et al. 2019 mock sentiment, in miniature, fully offline: the default of `python launch.py`.

The project's own miniature world (docs/world.md): stories from a sentence
grammar the project owns; a byte-level BPE tokenizer and a tiny GPT-2
pretrained on them until the policy writes grammatical sentences; a gold
reward that scores each grammatical sentence by its words' sentiment and
each broken one -1 (`labels.gold=world`; `vader` is the alternative); a
mock labeller picks the best of 4 continuations by that gold; a reward
model trained on those labels with gain/bias normalisation; PPO against the
reward model with adaptive KL; evaluation of gold score and KL against the
initial policy and best-of-N; figures.

    python launch.py                                  # = this file, into ./runs/<time>
    python launch.py --config=configs/mock_sentiment.py --workdir=runs/mock
    python launch.py --config=configs/mock_sentiment.py:runlocal --workdir=runs/mock_local
    python launch.py --config=configs/mock_sentiment.py:reward=gold   # PPO on the gold reward
    python launch.py --config=configs/mock_sentiment.py:online=mock   # online labels (Ziegler 2.3)

Expected (seed 0, constraints.txt versions, 2-core CPU; README "The offline
default"): pretrain held-out loss 1.88 nats/token (entropy 1.78); RM
held-out 4-way accuracy 0.23 -> 0.82 (chance 0.25); gold score -0.031 ->
0.560 after PPO at KL 2.72 nats; best-of-16 0.850 at 1.84 nats; about 5 min
on an idle 2-core CPU. `:runlocal`
only checks that every stage runs; its eval.json is pinned by
tests/test_reproducible.py.
"""

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.base_config()
    c.name = "mock_sentiment"
    c.stages = "pretrain,labels,reward,ppo,eval,figures"

    c.model.name_or_path = ""  # the pretrain stage's output
    c.model.tokenizer = "synthetic"  # trained on the synthetic corpus (workdir/tokenizer)
    c.model.init = "scratch"
    # Width 64, 2 layers: measured on this world, it reaches 1.83-1.89 nats/token
    # (the corpus' entropy is 1.78) and writes only grammatical sentences at
    # T=0.7 after ~900 steps, as do widths 128-256, at a fraction of their cost.
    c.model.n_embd = 64
    c.model.n_layer = 2
    c.model.n_head = 2
    c.model.n_positions = 64

    c.pretrain.num_docs = 40000  # synthetic stories
    c.pretrain.vocab_size = 1024  # BPE vocabulary (the corpus saturates near 1130)
    c.pretrain.seq_len = 64
    c.pretrain.batch_size = 64
    c.pretrain.epochs = 2  # ~940 steps
    c.pretrain.lr = 5e-3
    # Without warmup the loss sits at the unigram level (~5 nats) for the
    # first ~100 steps at this lr.
    c.pretrain.warmup_frac = 0.05
    c.pretrain.log_every = 50

    c.task.name = "mock_sentiment"
    c.task.query_dataset = "synthetic"
    c.task.dataset_path = ""
    c.task.query_length = 24  # LHP 64, shrunk with the corpus' short sentences
    c.task.response_length = 16  # LHP 24
    c.task.start_text = "."  # queries start after a sentence end ...
    c.task.end_text = "."  # ... and end at one (LHP books)
    c.task.truncate_token = 13  # '.' (id 13, as in GPT-2's BPE)
    c.task.truncate_after = 6  # LHP 16 of 24
    c.task.penalty_reward_value = -1.0
    c.task.temperature = 0.7
    c.task.eos_token = None  # from the tokenizer
    c.task.pad_token = None  # the tokenizer's size: outside the vocabulary

    c.labels.type = "best_of_4"
    c.labels.source = "mock"
    c.labels.gold = "world"
    c.labels.num_train = 2048  # LHP offline_5k has 4,992
    c.labels.num_val = 256
    c.labels.batch_size = 256

    c.reward.batch_size = 32
    c.reward.lr = 1e-3  # tiny model; LHP 5e-5 for 124M
    # The papers take one pass over 5k-60k labels on a 774M model that already
    # knows sentiment; the tiny model takes 4 passes over 2,048 labels (with
    # 512 labels it stays near chance on this world).
    c.reward.epochs = 4
    c.reward.normalize_samples = 256
    c.reward.rollout_batch_size = 256
    c.reward.log_every = 8

    c.ppo.batch_size = 64
    c.ppo.total_episodes = 64 * 150
    c.ppo.lr = 1e-4  # tiny model; LHP 1e-5 for 124M
    c.ppo.log_every = 5
    c.ppo.checkpoint_every = 25

    # `:online=mock|human` (Ziegler 2.3): label 256 fresh policy samples and
    # retrain the RM before updates 51 and 101.
    c.labels.online.every = 50
    c.labels.online.num_queries = 256

    c.kl.coef = 0.15
    c.kl.adaptive = True
    c.kl.target = 3.0  # LHP 6 nats over 24 tokens; 16 tokens here
    c.kl.horizon = 10000

    c.eval.num_queries = 256
    c.eval.batch_size = 64
    c.eval.best_of_n = (1, 4, 16)

    return config_lib.apply_switches(c, arg, runlocal=_runlocal)


def _runlocal(c):
    c.model.n_embd = 32
    c.model.n_layer = 2
    c.model.n_head = 2
    c.pretrain.num_docs = 3000
    c.pretrain.vocab_size = 512
    c.pretrain.batch_size = 32
    c.pretrain.log_every = 10
    c.labels.num_train = 128
    c.labels.num_val = 64
    c.labels.batch_size = 64
    c.reward.batch_size = 16
    c.reward.epochs = 1
    c.reward.normalize_samples = 64
    c.reward.rollout_batch_size = 64
    c.reward.log_every = 4
    c.ppo.batch_size = 32
    c.ppo.total_episodes = 32 * 6
    c.ppo.log_every = 2
    c.ppo.checkpoint_every = 3
    c.labels.online.every = 3  # `online=...`: one collect-retrain cycle, before update 4 of 6
    c.labels.online.num_queries = 16
    c.eval.num_queries = 64
    c.eval.batch_size = 32
    c.eval.best_of_n = (1, 4)
