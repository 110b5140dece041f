"""Config schema shared by `configs/*.py`: the base, the switches, validation.

Every field the code reads exists here with the LHP `launch.py` default (the
shared settings under the per-task table of docs/implementation_details.md), so
trainers read fields directly and a typo in an override fails loudly
(`lock_config=True` in launch.py). An experiment file sets its task and paper
choices, then calls `apply_switches` with its `get_config(arg)` argument: a
comma list such as
`runlocal,value=separate,loss=bt,kl=fixed,whiten=off,adam=torch,head=scalar_mix`.
`config_check.resolve` validates the whole config before any work.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

STAGES = ("pretrain", "sft", "labels", "reward", "ppo", "dpo", "bon_sft", "ul", "eval",
          "figures")
# The order that numbers each stage's PRNG stream: new stages go last, so a
# stage's stream (and a seeded run's numbers) never moves when one is added.
STAGE_STREAMS = ("pretrain", "sft", "labels", "reward", "ppo", "dpo", "eval", "figures",
                 "bon_sft", "ul")

SWITCHES = {
    "runlocal": "shrink to a seconds-long CPU run (tiny random models, local data)",
    "value": "shared | separate: value model (Ziegler shares the trunk; Stiennon separate)",
    "loss": "bo4 | bt: best-of-4 softmax labels or pairwise Bradley-Terry labels",
    "kl": "adaptive | fixed | off: KL control (off sets kl.coef=0)",
    "whiten": "on | off: reward whitening (ppo.whiten_rewards)",
    "adam": "tf | torch: Adam style for every optimizer",
    "head": "linear | scalar_mix | selector: reward head",
    "reward": "rm | gold: PPO against the learned RM or directly on the gold reward",
    "labels": "N: number of training labels (labels.num_train)",
    "seed": "N: config.seed",
    "online": "mock | human: online label collection during PPO (labels.online)",
    "algo": "ppo | rloo | grpo | dr_grpo | reinforce | dpo | bon_sft | ul: how the policy is trained "
            "(ppo.algo in the ppo stage, or the dpo / bon_sft / ul stage in its place)",
    "spans": "on | off: mock span marks on the labels (labels.spans.enabled)",
    "token_rm": "on | off: token-level reward model on span marks + dense PPO rewards",
    "judge": "on | off: held-out mock labeller in eval (eval.judge.enabled)",
    "arch": "gpt2 | llama | qwen2 | qwen3: architecture of a random init or pretrain "
            "(model.arch; a checkpoint's own config.json names its architecture)",
}


# The fields of every supervised training loop's group (`LoopConfig`), in one list.
LOOP_FIELDS = ("batch_size", "epochs", "lr", "schedule", "warmup_frac", "adam", "adam_eps",
               "log_every", "eval_every", "checkpoint_every")


def loop_group(*, batch_size: int, lr: float, schedule: str, adam: str, adam_eps: float,
               log_every: int, checkpoint_every: int, epochs: int = 1, warmup_frac: float = 0.0,
               eval_every: int = 0) -> ml_collections.ConfigDict:
    """A config group holding the `LOOP_FIELDS` of one supervised training loop.

    `batch_size`: global examples per optimizer step; `schedule`: linear (to zero,
    Ziegler) | cosine (to zero, Stiennon) | constant; `warmup_frac`: share of steps
    with a linear lr warmup (cosine only); `adam`: tf (LHP's TensorFlow Adam) |
    torch; `eval_every`: held-out evaluation every this many steps (0: before and
    after training only). The stage adds its own fields to the group.
    """
    values = dict(batch_size=batch_size, epochs=epochs, lr=lr, schedule=schedule,
                  warmup_frac=warmup_frac, adam=adam, adam_eps=adam_eps, log_every=log_every,
                  eval_every=eval_every, checkpoint_every=checkpoint_every)
    return ml_collections.ConfigDict({f: values[f] for f in LOOP_FIELDS})


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """A supervised loop's settings, read from one config group (`cfg.<stage>`,
    fields `LOOP_FIELDS`, documented at `loop_group`). `stage` is the group's
    name; also the metric prefix (`reward/loss`), the writer's stage and the
    checkpoint subdirectory."""

    stage: str
    batch_size: int
    epochs: int
    lr: float
    schedule: str
    warmup_frac: float
    adam: str
    adam_eps: float
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, cfg, stage: str) -> "LoopConfig":
        """Reads `cfg.<stage>`'s `LOOP_FIELDS`; a missing field raises. The values
        are checked once, by `config_check.resolve` (`validate`)."""
        return cls(stage=stage, **{f: cfg[stage][f] for f in LOOP_FIELDS})

    def validate(self) -> None:
        """ValueError naming the field for a value out of range."""
        for name, low in (("batch_size", 1), ("epochs", 1), ("log_every", 1),
                          ("eval_every", 0), ("checkpoint_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{self.stage}.{name}={value!r} must be an int >= {low}")
        if not self.lr >= 0:
            raise ValueError(f"{self.stage}.lr={self.lr!r} must be >= 0")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"{self.stage}.warmup_frac={self.warmup_frac!r} must be in [0, 1)")
        if self.warmup_frac and self.schedule != "cosine":
            raise ValueError(f"{self.stage}.warmup_frac={self.warmup_frac!r} needs "
                             f"{self.stage}.schedule='cosine', got {self.schedule!r}")

    def steps_per_epoch(self, num_examples: int, *, num_field: str, drop_last: bool,
                        num_devices: int) -> int:
        """Optimizer steps per epoch; ValueError naming the fields when the sizes
        do not divide (`drop_last` allows a remainder, dropped each epoch)."""
        if self.batch_size % num_devices:
            raise ValueError(f"{self.stage}.batch_size={self.batch_size} is not divisible "
                             f"by the device count {num_devices}")
        if not drop_last and num_examples % self.batch_size:
            raise ValueError(f"{num_field}={num_examples} is not divisible by "
                             f"{self.stage}.batch_size={self.batch_size}")
        steps = num_examples // self.batch_size
        if steps < 1:
            raise ValueError(f"{num_field}={num_examples} is smaller than "
                             f"{self.stage}.batch_size={self.batch_size}: no full batch")
        return steps


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default. One long function on purpose: the schema reads
    top to bottom, a group at a time, each field beside its comment."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0  # one base key; every stage folds in its own stream
    c.stages = "labels,reward,ppo,eval,figures"  # comma list, run in STAGES order

    c.model = m = ml_collections.ConfigDict()
    m.name_or_path = "gpt2"  # hub name or local HF dir; "" = the pretrain/sft stage's output
    m.tokenizer = ""  # "" = same as name_or_path (or the pretrain stage's tokenizer)
    m.init = "pretrained"  # pretrained | scratch (random init of the sizes below)
    m.arch = "gpt2"  # of a random init / pretrain: gpt2 | llama | qwen2 | qwen3 (models/arch.py)
    m.n_kv_head = 0  # llama / qwen: key/value heads (0: half of n_head, at least 1)
    m.n_embd = 768
    m.n_layer = 12
    m.n_head = 12
    m.n_positions = 1024
    m.dtype = "float32"  # compute dtype: float32 | bfloat16
    m.param_dtype = "float32"  # master weights
    m.remat = False  # rematerialise each block in the backward pass
    m.kv_cache_dtype = ""  # sampler's KV cache: "" = the compute dtype | bfloat16 | float32
    m.attention_impl = ""  # "" = cuDNN's fused kernel where it applies, else XLA | xla | cudnn
    m.logits_chunk = 0  # PPO: LM head + log-softmax in chunks of this many positions (0: at once)

    c.task = t = ml_collections.ConfigDict()
    t.name = ""
    t.query_dataset = "books"  # synthetic | books | tldr | cnndm | world_tldr
    t.num_docs = 0  # world_tldr: stories in the train split (valid, test: a tenth each)
    t.story_lead = False  # world_tldr: the main event opens every story (a news lead)
    t.dataset_path = "bookcorpus"  # local file/dir or HF dataset name
    t.query_format = "lhp"  # lhp: raw text, the RM reads it raw | sff: Stiennon's template
    # | chat: sff's text as a user turn in the tokenizer's chat template (instruct models)
    t.query_length = 64  # tokens of the raw query (LHP: prefix and suffix come on top)
    t.response_length = 24
    t.query_prefix = ""  # policy and reference only, never the RM (LHP query_formatter)
    t.query_suffix = ""
    t.start_text = "."
    t.end_text = "."
    t.truncate_token = 13  # '.' in GPT-2's BPE; None: no truncation
    t.truncate_after = 16
    t.penalty_reward_value = -1.0  # score of a response without truncate_token; None: off
    t.temperature = 0.7
    t.eos_token = 50256  # None: the tokenizer's eos_token_id
    t.stop_at_eos = False  # Stiennon: stop, mask and score at EOS
    # Outside the vocabulary (docs/implementation_details.md item 2); None: the tokenizer's size.
    t.pad_token = 50259

    c.pretrain = p = loop_group(  # offline default only
        batch_size=64, lr=1e-3, schedule="cosine", adam="torch", adam_eps=1e-8, log_every=50,
        checkpoint_every=200)
    p.num_docs = 20000
    p.vocab_size = 1024
    p.seq_len = 64
    p.num_val = 256

    c.sft = s = loop_group(  # Stiennon
        batch_size=128, lr=6.35e-5, schedule="cosine", adam="torch", adam_eps=1e-5,
        log_every=20, checkpoint_every=200)
    s.loss_on = "response"
    s.num_train = 116000
    s.num_val = 512

    c.labels = lb = ml_collections.ConfigDict()
    lb.type = "best_of_4"  # best_of_4 | pairwise | scalar_rating | scalar_compare
    lb.source = "mock"  # mock (a gold reward picks) | file
    lb.path = ""  # label file (source=file)
    lb.val_path = ""  # held-out label file (source=file); "" = none
    lb.format = "lhp"  # lhp | sff | jsonl
    lb.num_train = 4992  # LHP offline_5k
    lb.num_val = 256
    # gold reward (mock labeller, eval): world | vader | summary | summary_accuracy |
    # summary_facts | summary_skim | none
    lb.gold = "world"
    lb.ungrammatical_penalty = 1.0  # world gold: score of a broken or unfinished sentence
    lb.mock_noise = 0.0  # Boltzmann temperature of a noisy mock labeller
    lb.batch_size = 64  # queries per sampling batch when generating mock (and online) labels
    # Share of mock pairwise records in which one response (its slot drawn at
    # random) is the query's reference summary rather than a policy sample:
    # Stiennon et al.'s comparisons include the dataset's references. Needs a
    # dataset with references (tldr, cnndm, world_tldr).
    lb.reference_share = 0.0
    # Online collection (Ziegler 2.3): every `every` PPO updates, label fresh
    # samples of the current policy and retrain the RM on the grown set.
    lb.online = o = ml_collections.ConfigDict()
    o.enabled = False
    o.every = 100  # PPO updates between collections
    o.num_queries = 512  # queries labelled per collection
    o.k = 0  # responses per query; 0 = labels.type's K (must match it)
    o.labeler = "mock"  # mock (labels.gold picks) | human (the label server's queue)
    o.db = ""  # human: the label server's SQLite file (python -m rlhf_jax.labelling.label_server)
    o.poll_seconds = 10.0  # human: how often the queue is polled while waiting
    o.max_skips = 3  # human: an item skipped by this many labellers is dropped
    o.retrain = "continue"  # continue (from the current RM) | reinit (Ziegler: fresh head)
    o.reward_epochs = 1  # passes over the grown label set per retrain (Ziegler: 1)
    # Span marks (tokens that lower the gold), by the mock span labeller
    # (`rlhf_jax.labelling.spans`) on every record that has none (file labels keep theirs).
    lb.spans = sp = ml_collections.ConfigDict()
    sp.enabled = False
    sp.miss = 0.0  # probability a bad word goes unmarked
    sp.flip = 0.0  # probability a good token is marked
    sp.seed = 0  # the span labeller's noise draw (not `seed`: one label pool for every seed)
    sp.kinds = "negative,ungrammatical"  # which kinds of bad word are marked

    c.reward = r = loop_group(batch_size=32, lr=5e-5, schedule="linear", adam="tf",
                              adam_eps=1e-5, log_every=10, checkpoint_every=50)
    r.normalize_before = True
    r.normalize_after = True
    r.normalize_samples = 256
    r.normalize_mode = "gain_bias"  # gain_bias (Ziegler) | bias_only (Stiennon)
    r.rollout_batch_size = 512
    r.head = "linear"  # linear | scalar_mix | selector
    r.reward_at = "last"  # last (Ziegler) | eos (Stiennon)
    # head=selector: fresh transformer blocks on a mix of these trunk layers
    # (hidden-state indices, 0 = embeddings; () = the middle one), trunk frozen.
    r.selector_layers = ()
    r.selector_blocks = 1
    r.token_head = False  # a per-token head trained on span marks (Wu et al. 2023)
    r.span_coef = 1.0  # weight of the per-token span loss beside the comparison loss

    c.ppo = q = ml_collections.ConfigDict()
    q.batch_size = 512
    q.nminibatches = 1
    q.noptepochs = 4
    q.lr = 1e-5
    q.adam = "tf"
    q.adam_eps = 1e-5
    q.cliprange = 0.2
    q.cliprange_value = 0.2
    q.vf_coef = 0.1
    q.gamma = 1.0
    q.lam = 0.95
    q.whiten_rewards = True
    q.whiten_scope = "global"  # global (any device count) | minibatch (LHP: per minibatch, device)
    q.total_episodes = 1_000_000
    q.value_model = "shared"  # shared (Ziegler) | separate (Stiennon, from the RM)
    q.reward_source = "rm"  # rm | gold
    # reward_source=gold: scale the gold to N(0, 1) on the initial policy's samples,
    # as the RM is normalised (reward.normalize_samples of them), so the KL penalty
    # weighs the same against both rewards.
    q.gold_normalize = False
    q.log_every = 1
    q.checkpoint_every = 20
    # Newest PPO checkpoints kept on disk; more keep snapshots along the run
    # for `eval.ppo_snapshots` (each holds the policy, value and Adam state).
    q.keep_checkpoints = 2
    q.num_logged_samples = 4
    q.algo = "ppo"  # ppo | rloo (Ahmadian et al. 2024) | grpo (Shao et al. 2024) | reinforce
    q.rloo_k = 4  # rloo, grpo: samples per query (the batch is batch_size / k queries)
    q.grpo_variant = "grpo"  # grpo (group std, per-response mean) | dr_grpo (neither; Liu et al. 2025)
    q.kl_in = "reward"  # reward: per-token penalty (the papers) | loss: k3 term x kl.coef (GRPO)
    q.baseline_decay = 0.9  # reinforce: baseline <- decay * baseline + (1 - decay) * mean return
    # Dense per-token rewards from a token-level RM (reward.token_head): each
    # response token earns coef * (clean if the RM calls it clean, else -1).
    q.token_reward_coef = 0.0  # 0 = off
    q.token_reward_clean = 0.0  # reward of a clean token (Wu et al.: +1)
    q.token_reward_mode = "hard"  # hard (the RM's decision, Wu et al.) | prob (its expectation)

    c.kl = k = ml_collections.ConfigDict()
    k.coef = 0.15
    k.adaptive = True
    k.target = 6.0
    k.horizon = 10000

    c.dpo = d = loop_group(batch_size=32, lr=5e-6, schedule="linear", adam="torch",
                           adam_eps=1e-8, log_every=10, checkpoint_every=50)
    d.beta = 0.1

    # Expert iteration: best-of-n by the RM, then SFT.
    c.bon_sft = b = loop_group(batch_size=32, lr=1e-4, schedule="linear", adam="torch",
                               adam_eps=1e-8, log_every=10, checkpoint_every=50)
    b.n = 4  # candidates per query
    b.num_queries = 512  # training queries per round
    b.rounds = 1  # sample-select-train rounds, each sampling from the latest policy

    # Likelihood on preferred responses + unlikelihood on marked tokens.
    c.ul = u = loop_group(batch_size=32, lr=1e-4, schedule="linear", adam="torch",
                          adam_eps=1e-8, log_every=10, checkpoint_every=50)
    u.alpha = 1.0  # weight of the unlikelihood term

    c.eval = e = ml_collections.ConfigDict()
    e.num_queries = 256
    e.batch_size = 64
    e.best_of_n = (1, 4, 16)
    e.num_samples_logged = 8
    # Also evaluate the policy of every kept PPO checkpoint (`ppo@<update>` in
    # eval.json): one run's gold-vs-KL frontier along its trajectory.
    e.ppo_snapshots = False
    # A held-out mock labeller judges each policy's responses against the
    # initial policy's: gold minus a weight per bad word of each kind, its own
    # noise (Boltzmann temperature) and seed. eval.json gets `judge_winrate`.
    e.judge = j = ml_collections.ConfigDict()
    j.enabled = False
    j.noise = 0.05
    j.seed = 1_000_003
    j.weight_negative = 0.1
    j.weight_ungrammatical = 0.1

    c.parallel = pa = ml_collections.ConfigDict()
    pa.mode = "pmap"  # pmap | mesh
    pa.num_devices = 0  # 0 = all local devices
    pa.fsdp = 1  # mesh mode: devices per fsdp group (params / optimizer state split over them)

    c.log = lg = ml_collections.ConfigDict()
    lg.tensorboard = True
    lg.wandb_project = ""  # "" = off
    return c


def optimizer_groups(c: ml_collections.ConfigDict) -> list[str]:
    """The config groups with an optimizer (an `adam` field), read from the schema."""
    return [name for name, group in c.items()
            if isinstance(group, ml_collections.ConfigDict) and "adam" in group]


def loop_groups(c: ml_collections.ConfigDict) -> list[str]:
    """The config groups a supervised training loop reads (`LoopConfig`)."""
    return [name for name, group in c.items()
            if isinstance(group, ml_collections.ConfigDict)
            and all(f in group for f in LOOP_FIELDS)]


def _set_adam(c, style):
    for g in optimizer_groups(c):
        c[g].adam = style
        if style == "tf":
            c[g].adam_eps = 1e-5


def apply_switches(c: ml_collections.ConfigDict, arg: str | None, *, runlocal=None):
    """Applies `get_config(arg)` switches; `runlocal(c)` shrinks the config."""
    if not arg:
        return c
    for item in (a.strip() for a in arg.split(",")):
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in SWITCHES:
            raise ValueError(f"config switch {item!r} unknown; known: "
                             + "; ".join(f"{k}: {v}" for k, v in SWITCHES.items()))
        if key == "runlocal":
            if runlocal is None:
                raise ValueError(f"config {c.name!r} has no runlocal variant")
            runlocal(c)
        elif key == "value":
            _choice(item, value, ("shared", "separate"))
            c.ppo.value_model = value
        elif key == "loss":
            _choice(item, value, ("bo4", "bt"))
            c.labels.type = "best_of_4" if value == "bo4" else "pairwise"
        elif key == "kl":
            _choice(item, value, ("adaptive", "fixed", "off"))
            c.kl.adaptive = value == "adaptive"
            if value == "off":
                c.kl.coef = 0.0
        elif key == "whiten":
            _choice(item, value, ("on", "off"))
            c.ppo.whiten_rewards = value == "on"
        elif key == "adam":
            _choice(item, value, ("tf", "torch"))
            _set_adam(c, value)
        elif key == "head":
            _choice(item, value, ("linear", "scalar_mix", "selector"))
            c.reward.head = value
        elif key == "reward":
            _choice(item, value, ("rm", "gold"))
            c.ppo.reward_source = value
        elif key == "labels":
            c.labels.num_train = _integer(item, value)
        elif key == "seed":
            c.seed = _integer(item, value)
        elif key == "online":
            _choice(item, value, ("mock", "human"))
            c.labels.online.enabled = True
            c.labels.online.labeler = value
        elif key == "algo":
            _choice(item, value, ("ppo", "rloo", "grpo", "dr_grpo", "reinforce", "dpo", "bon_sft",
                                  "ul"))
            _set_algo(c, value)
        elif key == "spans":
            _choice(item, value, ("on", "off"))
            c.labels.spans.enabled = value == "on"
        elif key == "token_rm":
            _choice(item, value, ("on", "off"))
            on = value == "on"
            c.labels.spans.enabled = c.labels.spans.enabled or on
            c.reward.token_head = on
            c.ppo.token_reward_coef = 1.0 if on else 0.0
        elif key == "judge":
            _choice(item, value, ("on", "off"))
            c.eval.judge.enabled = value == "on"
        elif key == "arch":
            _choice(item, value, ("gpt2", "llama", "qwen2", "qwen3"))
            c.model.arch = value
    return c


def _set_algo(c, algo: str) -> None:
    """`algo=`: ppo / rloo / grpo / reinforce set `ppo.algo` (dr_grpo: grpo with
    `ppo.grpo_variant="dr_grpo"`); dpo, bon_sft and ul take the ppo stage's place
    (dpo and ul need no reward model, so its stage goes too)."""
    stages = [s.strip() for s in c.stages.split(",") if s.strip()]
    if algo == "dr_grpo":
        c.ppo.algo, c.ppo.grpo_variant = "grpo", "dr_grpo"
        return
    if algo in ("ppo", "rloo", "grpo", "reinforce"):
        c.ppo.algo = algo
        return
    drop = {"ppo"} | ({"reward"} if algo in ("dpo", "ul") else set())
    kept = [s for s in stages if s not in drop]
    c.stages = ",".join(kept + [algo])  # stage_list runs them in STAGES order
    if algo == "ul":
        c.labels.spans.enabled = True


def _choice(item, value, options):
    if value not in options:
        raise ValueError(f"config switch {item!r}: expected one of {options}")


def _integer(item, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"config switch {item!r}: expected an integer") from None


def stage_list(c) -> list[str]:
    stages = [s.strip() for s in c.stages.split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"stages: unknown stage {s!r}; known: {STAGES}")
    return [s for s in STAGES if s in stages]


def fixtures_dir() -> str:
    """The repository's small local datasets (tests/fixtures), used by `:runlocal`."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tests", "fixtures")


def runlocal_common(c, *, query_length: int = 24, response_length: int = 12,
                    truncate_after: int = 4) -> None:
    """Shrinks any paper config to a CPU smoke run of a minute or two, offline.

    A tiny random GPT-2 and a BPE tokenizer trained on the synthetic corpus
    (no downloads); mock labels from the miniature world's gold on the paper's own label
    type; every stage and code path of the paper config, at toy sizes.
    """
    c.model.init = "scratch"
    c.model.tokenizer = "synthetic"
    c.model.n_embd = 32
    c.model.n_layer = 2
    c.model.n_head = 2
    # Room for the policy's query prefix / suffix tokens (LHP formats).
    formatted = bool(c.task.query_prefix or c.task.query_suffix)
    c.model.n_positions = query_length + response_length + (16 if formatted else 0)
    c.pretrain.num_docs = 2000
    c.pretrain.vocab_size = 512
    c.task.query_length = query_length
    c.task.response_length = response_length
    if c.task.truncate_token is not None:
        c.task.truncate_after = truncate_after
    c.task.pad_token = None
    c.task.eos_token = None
    c.labels.source = "mock"
    c.labels.gold = "world"
    c.labels.num_train = 64
    c.labels.num_val = 32
    c.labels.batch_size = 32
    c.reward.batch_size = 16
    c.reward.normalize_samples = 32
    c.reward.rollout_batch_size = 32
    c.reward.log_every = 2
    c.reward.lr = 3e-4
    c.sft.num_train = 64
    c.sft.num_val = 16
    c.sft.batch_size = 16
    c.sft.log_every = 2
    c.ppo.batch_size = 16
    c.ppo.nminibatches = min(c.ppo.nminibatches, 2)
    c.ppo.total_episodes = 16 * 3
    c.ppo.log_every = 1
    c.ppo.checkpoint_every = 2
    c.ppo.lr = 1e-4
    c.labels.online.every = 2  # `online=...`: one collection within the 3 PPO updates
    c.labels.online.num_queries = 16
    c.dpo.batch_size = 16
    c.eval.num_queries = 32
    c.eval.batch_size = 16
    c.eval.best_of_n = (1, 2)
