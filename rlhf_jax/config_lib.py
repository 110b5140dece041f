"""Config schema shared by `configs/*.py`: the base, the switches, validation.

Every field the code reads exists here with the LHP `launch.py` default (the
shared settings under the per-task table of docs/implementation_details.md), so
trainers read fields directly and a typo in an override fails loudly
(`lock_config=True` in launch.py). An experiment file sets its task and paper
choices, then calls `apply_switches` with its `get_config(arg)` argument: a
comma list such as
`runlocal,value=separate,loss=bt,kl=fixed,whiten=off,adam=torch,head=scalar_mix`.
`resolve` validates the whole config before any work and returns the derived
sizes that `launch.py --dry_run` prints.
"""

from __future__ import annotations

import math

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
    "algo": "ppo | rloo | reinforce | dpo | bon_sft | ul: how the policy is trained "
            "(ppo.algo in the ppo stage, or the dpo / bon_sft / ul stage in its place)",
    "spans": "on | off: mock span marks on the labels (labels.spans.enabled)",
    "token_rm": "on | off: token-level reward model on span marks + dense PPO rewards",
    "judge": "on | off: held-out mock labeller in eval (eval.judge.enabled)",
}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0  # one base key; every stage folds in its own stream
    c.stages = "labels,reward,ppo,eval,figures"  # comma list, run in STAGES order

    c.model = m = ml_collections.ConfigDict()
    m.name_or_path = "gpt2"  # hub name or local HF dir; "" = the pretrain/sft stage's output
    m.tokenizer = ""  # "" = same as name_or_path (or the pretrain stage's tokenizer)
    m.init = "pretrained"  # pretrained | scratch (random init of the sizes below)
    m.n_embd = 768
    m.n_layer = 12
    m.n_head = 12
    m.n_positions = 1024
    m.dtype = "float32"  # compute dtype: float32 | bfloat16
    m.param_dtype = "float32"  # master weights
    m.remat = False  # rematerialise each block in the backward pass
    m.kv_cache_dtype = ""  # sampler's KV cache: "" = the compute dtype | bfloat16 | float32

    c.task = t = ml_collections.ConfigDict()
    t.name = ""
    t.query_dataset = "books"  # synthetic | books | tldr | cnndm
    t.dataset_path = "bookcorpus"  # local file/dir or HF dataset name
    t.query_format = "lhp"  # lhp: raw text, the RM reads it raw | sff: Stiennon's template
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

    c.pretrain = p = ml_collections.ConfigDict()  # offline default only
    p.num_docs = 20000
    p.vocab_size = 1024
    p.seq_len = 64
    p.batch_size = 64
    p.epochs = 1
    p.lr = 1e-3
    p.schedule = "cosine"
    p.warmup_frac = 0.0  # share of steps with a linear lr warmup (cosine only)
    p.adam = "torch"
    p.adam_eps = 1e-8
    p.log_every = 50
    p.eval_every = 0
    p.checkpoint_every = 200
    p.num_val = 256

    c.sft = s = ml_collections.ConfigDict()  # Stiennon
    s.batch_size = 128
    s.epochs = 1
    s.lr = 6.35e-5
    s.schedule = "cosine"
    s.warmup_frac = 0.0  # share of steps with a linear lr warmup (cosine only)
    s.adam = "torch"
    s.adam_eps = 1e-5
    s.log_every = 20
    s.eval_every = 0
    s.checkpoint_every = 200
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
    lb.gold = "world"  # gold reward (mock labeller, eval): world | vader | none
    lb.ungrammatical_penalty = 1.0  # world gold: score of a broken or unfinished sentence
    lb.mock_noise = 0.0  # Boltzmann temperature of a noisy mock labeller
    lb.batch_size = 64  # queries per sampling batch when generating mock (and online) labels
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

    c.reward = r = ml_collections.ConfigDict()
    r.batch_size = 32
    r.epochs = 1
    r.lr = 5e-5
    r.schedule = "linear"
    r.warmup_frac = 0.0  # share of steps with a linear lr warmup (cosine only)
    r.adam = "tf"
    r.adam_eps = 1e-5
    r.log_every = 10
    r.eval_every = 0
    r.checkpoint_every = 50
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
    q.log_every = 1
    q.checkpoint_every = 20
    q.num_logged_samples = 4
    q.algo = "ppo"  # ppo | rloo (Ahmadian et al. 2024) | reinforce (moving-average baseline)
    q.rloo_k = 4  # rloo: samples per query (the batch is batch_size / k queries)
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

    c.dpo = d = ml_collections.ConfigDict()
    d.beta = 0.1
    d.batch_size = 32
    d.epochs = 1
    d.lr = 5e-6
    d.schedule = "linear"
    d.warmup_frac = 0.0  # share of steps with a linear lr warmup (cosine only)
    d.adam = "torch"
    d.adam_eps = 1e-8
    d.log_every = 10
    d.eval_every = 0
    d.checkpoint_every = 50

    c.bon_sft = b = ml_collections.ConfigDict()  # expert iteration: best-of-n by the RM, then SFT
    b.n = 4  # candidates per query
    b.num_queries = 512  # training queries per round
    b.rounds = 1  # sample-select-train rounds, each sampling from the latest policy
    b.batch_size = 32
    b.epochs = 1
    b.lr = 1e-4
    b.schedule = "linear"
    b.adam = "torch"
    b.adam_eps = 1e-8
    b.log_every = 10
    b.eval_every = 0
    b.checkpoint_every = 50
    b.warmup_frac = 0.0  # share of steps with a linear lr warmup (cosine only)

    c.ul = u = ml_collections.ConfigDict()  # likelihood on preferred + unlikelihood on marks
    u.alpha = 1.0  # weight of the unlikelihood term
    u.batch_size = 32
    u.epochs = 1
    u.lr = 1e-4
    u.schedule = "linear"
    u.adam = "torch"
    u.adam_eps = 1e-8
    u.log_every = 10
    u.eval_every = 0
    u.checkpoint_every = 50
    u.warmup_frac = 0.0  # share of steps with a linear lr warmup (cosine only)

    c.eval = e = ml_collections.ConfigDict()
    e.num_queries = 256
    e.batch_size = 64
    e.best_of_n = (1, 4, 16)
    e.num_samples_logged = 8
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


def _set_adam(c, style):
    for g in ("reward", "ppo", "dpo", "sft", "pretrain"):
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
            _choice(item, value, ("ppo", "rloo", "reinforce", "dpo", "bon_sft", "ul"))
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
    return c


def _set_algo(c, algo: str) -> None:
    """`algo=`: ppo / rloo / reinforce set `ppo.algo`; dpo, bon_sft and ul take the
    ppo stage's place (dpo and ul need no reward model, so its stage goes too)."""
    stages = [s.strip() for s in c.stages.split(",") if s.strip()]
    if algo in ("ppo", "rloo", "reinforce"):
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


def _need(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def num_updates(ppo_cfg) -> int:
    """`ceil(total_episodes / batch_size)`, as LHP `train_policy.nupdates` (line 79)."""
    return -(-ppo_cfg.total_episodes // ppo_cfg.batch_size)


def check_ppo(p, num_devices: int) -> int:
    """Validates the `ppo` fields the PPO trainer reads for `num_devices`; returns the
    per-device batch. `resolve` runs it for a config with a ppo stage, and
    `PPOTrainer` for the config it is given."""
    from rlhf_jax.algorithms.ppo import WHITEN_SCOPES

    _need(p.total_episodes >= p.batch_size,
          f"ppo.total_episodes={p.total_episodes} is smaller than ppo.batch_size={p.batch_size}")
    _need(p.batch_size % num_devices == 0,
          f"ppo.batch_size={p.batch_size} is not divisible by the device count {num_devices}")
    local = p.batch_size // num_devices
    _need(local % p.nminibatches == 0,
          f"ppo.batch_size per device ({local}) is not divisible by ppo.nminibatches="
          f"{p.nminibatches}")
    _need(p.adam in ("tf", "torch"), f"ppo.adam={p.adam!r}: expected 'tf' or 'torch'")
    _need(p.whiten_scope in WHITEN_SCOPES,
          f"ppo.whiten_scope={p.whiten_scope!r}: expected one of {WHITEN_SCOPES}")
    # LHP `train_policy.train` (lines 459-462) refuses these too.
    _need(not (p.whiten_scope == "minibatch" and p.whiten_rewards
               and local // p.nminibatches < 8),
          f"ppo.whiten_scope='minibatch' whitens each device's minibatch of "
          f"{local // p.nminibatches} rows; LHP requires at least 8 (raise ppo.batch_size or "
          "lower ppo.nminibatches)")
    _need(p.reward_source in ("rm", "gold"),
          f"ppo.reward_source={p.reward_source!r}: expected 'rm' or 'gold'")
    return local


def resolve(c, num_devices: int) -> dict:
    """Validates `c` for `num_devices` and returns derived sizes (one line per error)."""
    stages = stage_list(c)
    d = {"devices": num_devices, "stages": ",".join(stages)}
    _need(c.parallel.mode in ("pmap", "mesh"),
          f"parallel.mode={c.parallel.mode!r}: expected 'pmap' or 'mesh'")
    _need(c.model.dtype in ("float32", "bfloat16"),
          f"model.dtype={c.model.dtype!r}: expected float32 or bfloat16")
    _need(c.model.param_dtype in ("float32", "bfloat16"),
          f"model.param_dtype={c.model.param_dtype!r}: expected float32 or bfloat16")
    _need(c.model.kv_cache_dtype in ("", "float32", "bfloat16"),
          f"model.kv_cache_dtype={c.model.kv_cache_dtype!r}: expected '' (the compute dtype), "
          "float32 or bfloat16")
    f = c.parallel.fsdp
    _need(isinstance(f, int) and not isinstance(f, bool) and f >= 1,
          f"parallel.fsdp={f!r} must be an int >= 1")
    _need(f == 1 or c.parallel.mode == "mesh",
          f"parallel.fsdp={f} shards params over a mesh: it needs parallel.mode='mesh'")
    _need(num_devices % f == 0, f"parallel.fsdp={f} does not divide the device count "
          f"{num_devices}")
    if c.parallel.mode == "mesh":
        d["mesh"] = {"data": num_devices // f, "fsdp": f}
    _need(c.model.init in ("pretrained", "scratch"),
          f"model.init={c.model.init!r}: expected 'pretrained' or 'scratch'")
    t = c.task
    from rlhf_jax.data.datasets import check_query_format

    check_query_format(t)
    _need(t.query_length > 0, f"task.query_length={t.query_length} must be positive")
    _need(t.response_length > 0, f"task.response_length={t.response_length} must be positive")
    _need(t.temperature > 0, f"task.temperature={t.temperature} must be positive")
    if t.truncate_token is not None:
        _need(0 <= t.truncate_after < t.response_length,
              f"task.truncate_after={t.truncate_after} must lie in [0, task.response_length="
              f"{t.response_length})")
    ctx = t.query_length + t.response_length
    if c.model.init == "scratch" or "pretrain" in stages:
        _need(ctx <= c.model.n_positions,
              f"task.query_length + task.response_length = {ctx} exceeds model.n_positions="
              f"{c.model.n_positions}")
        _need(c.model.n_embd % c.model.n_head == 0,
              f"model.n_embd={c.model.n_embd} is not divisible by model.n_head={c.model.n_head}")
    d["context"] = ctx

    def divisible(value, by, field, by_field):
        _need(value % by == 0, f"{field}={value} is not divisible by {by_field}={by}")

    if "pretrain" in stages:
        divisible(c.pretrain.batch_size, num_devices, "pretrain.batch_size", "the device count")
    if "sft" in stages:
        divisible(c.sft.batch_size, num_devices, "sft.batch_size", "the device count")
        divisible(c.sft.num_train, c.sft.batch_size, "sft.num_train", "sft.batch_size")
        d["sft_steps"] = c.sft.num_train // c.sft.batch_size * c.sft.epochs
    if "reward" in stages or "dpo" in stages or "labels" in stages:
        lt = c.labels.type
        _need(lt in ("pairwise", "scalar_rating", "scalar_compare") or
              (lt.startswith("best_of_") and lt[8:].isdigit() and int(lt[8:]) >= 2),
              f"labels.type={lt!r}: expected best_of_N, pairwise, scalar_rating or scalar_compare")
        _need(c.labels.source in ("mock", "file"),
              f"labels.source={c.labels.source!r}: expected 'mock' or 'file'")
        _need(c.labels.source == "file" or c.labels.gold in ("world", "vader"),
              f"labels.source='mock' picks by the gold reward: labels.gold={c.labels.gold!r} "
              "must be 'world' or 'vader'")
        _need(c.labels.source == "file" or not (c.labels.path or c.labels.val_path),
              f"labels.path={c.labels.path!r} is set but labels.source='mock' does not read "
              "it: add --config.labels.source=file")
        if c.labels.source == "file":
            _need(c.labels.format != "sff" or t.query_format == "sff",
                  "labels.format='sff': SFF comparisons hold Stiennon-format queries; the "
                  "reward model would read other queries than PPO gives it: set "
                  "task.query_format='sff'")
            _need(bool(c.labels.path),
                  "labels.source='file' needs labels.path: a label file (LHP's released "
                  "labels, e.g. sentiment/offline_5k.json, or SFF comparisons); see README "
                  "'Data'")
            # The reward stage validates on labels.num_val held-out labels.
            _need(not ("reward" in stages and c.labels.num_val and not c.labels.val_path),
                  f"labels.num_val={c.labels.num_val} held-out labels, but labels.source='file' "
                  "has no labels.val_path: give one, or set labels.num_val=0")
    if "reward" in stages:
        divisible(c.reward.batch_size, num_devices, "reward.batch_size", "the device count")
        divisible(c.labels.num_train, c.reward.batch_size, "labels.num_train", "reward.batch_size")
        d["reward_steps"] = c.labels.num_train // c.reward.batch_size * c.reward.epochs
        if c.reward.normalize_before or c.reward.normalize_after:
            divisible(c.reward.rollout_batch_size, num_devices, "reward.rollout_batch_size",
                      "the device count")
    if "dpo" in stages:
        divisible(c.dpo.batch_size, num_devices, "dpo.batch_size", "the device count")
        _need(c.labels.type == "pairwise" or c.labels.type.startswith("best_of_"),
              f"labels.type={c.labels.type!r}: DPO needs comparisons")
    _need(c.labels.gold in ("world", "vader", "none"),
          f"labels.gold={c.labels.gold!r}: expected 'world', 'vader' or 'none'")
    _need(c.labels.ungrammatical_penalty >= 0,
          f"labels.ungrammatical_penalty={c.labels.ungrammatical_penalty} must be >= 0")
    if "ppo" in stages:
        p = c.ppo
        _need(p.reward_source == "rm" or c.labels.gold != "none",
              "ppo.reward_source='gold' needs a gold reward: labels.gold is 'none'")
        _need(p.value_model in ("shared", "separate"),
              f"ppo.value_model={p.value_model!r}: expected 'shared' or 'separate'")
        local = check_ppo(p, num_devices)
        if p.value_model == "separate":
            _need(p.reward_source == "rm" or "reward" in stages,
                  "ppo.value_model='separate' is initialised from the reward model: "
                  "add the reward stage or use value=shared")
        if c.kl.adaptive:
            _need(c.kl.target > 0, f"kl.target={c.kl.target} must be > 0 when kl.adaptive")
        d["ppo_updates"] = num_updates(p)
        d["ppo_minibatch"] = p.batch_size // p.nminibatches
        d["ppo_per_device_batch"] = local
    _resolve_methods(c, stages, num_devices, d)
    if c.labels.online.enabled:
        d["online_rounds"] = _resolve_online(c, stages, num_devices)
    if "eval" in stages:
        divisible(c.eval.batch_size, num_devices, "eval.batch_size", "the device count")
        divisible(c.eval.num_queries, c.eval.batch_size, "eval.num_queries", "eval.batch_size")
        d["best_of_n_kl"] = {n: round(math.log(n) - (n - 1) / n, 4) for n in c.eval.best_of_n}
    return d


def check_files(c: ml_collections.ConfigDict) -> None:
    """ValueError naming the field of an input file the labels stage would read that
    is missing (local label files). Separate from `resolve`, which also validates
    sweep members whose inputs an earlier member will write."""
    import os

    if c.labels.source != "file" or "labels" not in stage_list(c):
        return
    for field in ("path", "val_path"):
        path = c.labels[field]
        _need(not path or "://" in path or os.path.isfile(path),
              f"labels.{field}={path!r}: no such file")


# Gold rewards that can say which words lower them (`spans.span_source`).
SPAN_GOLDS = ("world", "vader")


def _resolve_methods(c, stages, num_devices: int, d: dict) -> None:
    """Validates span marks, the token-level RM, the RM head, ppo.algo, bon_sft, ul
    and the eval judge (the fields of `docs/methods.md`)."""
    sp, r, p = c.labels.spans, c.reward, c.ppo
    has_marks = sp.enabled or c.labels.source == "file"  # files may carry people's marks
    if sp.enabled:
        for field in ("miss", "flip"):
            _need(0.0 <= sp[field] <= 1.0,
                  f"labels.spans.{field}={sp[field]} must lie in [0, 1]")
        kinds = [k.strip() for k in sp.kinds.split(",") if k.strip()]
        _need(bool(kinds) and set(kinds) <= {"negative", "ungrammatical"},
              f"labels.spans.kinds={sp.kinds!r}: expected a comma list of negative, "
              "ungrammatical")
        _need(c.labels.gold in SPAN_GOLDS or c.labels.source == "file",
              f"labels.spans.enabled: the mock span labeller marks the words that lower "
              f"labels.gold={c.labels.gold!r}, which has no word-level spans (one of "
              f"{SPAN_GOLDS})")
    _need(r.head in ("linear", "scalar_mix", "selector"),
          f"reward.head={r.head!r}: expected linear, scalar_mix or selector")
    if r.head == "selector":
        _need(isinstance(r.selector_blocks, int) and r.selector_blocks >= 1,
              f"reward.selector_blocks={r.selector_blocks!r} must be an int >= 1")
        if c.model.init == "scratch" or "pretrain" in stages:
            bad = [i for i in r.selector_layers if not 0 <= i <= c.model.n_layer]
            _need(not bad, f"reward.selector_layers={tuple(r.selector_layers)}: layers {bad} "
                  f"outside 0..model.n_layer={c.model.n_layer}")
        _need(not ("ppo" in stages and p.value_model == "separate" and p.algo == "ppo"),
              "ppo.value_model='separate' is initialised from the reward model, which "
              "reward.head='selector' cannot seed; use value=shared or another head")
    if r.token_head:
        _need(r.span_coef >= 0, f"reward.span_coef={r.span_coef} must be >= 0")
        _need(has_marks, "reward.token_head trains on span marks: set labels.spans.enabled "
              "(the mock span labeller) or read a label file that carries them")
    if "ppo" in stages:
        _need(p.algo in ("ppo", "rloo", "reinforce"),
              f"ppo.algo={p.algo!r}: expected ppo, rloo or reinforce")
        if p.algo == "rloo":
            _need(isinstance(p.rloo_k, int) and p.rloo_k >= 2,
                  f"ppo.rloo_k={p.rloo_k!r} must be an int >= 2")
            _need(p.batch_size % p.rloo_k == 0,
                  f"ppo.batch_size={p.batch_size} is not divisible by ppo.rloo_k={p.rloo_k}")
            d["rloo_queries_per_update"] = p.batch_size // p.rloo_k
        if p.algo == "reinforce":
            _need(0.0 <= p.baseline_decay < 1.0,
                  f"ppo.baseline_decay={p.baseline_decay} must lie in [0, 1)")
        _need(p.token_reward_mode in ("hard", "prob"),
              f"ppo.token_reward_mode={p.token_reward_mode!r}: expected 'hard' or 'prob'")
        _need(p.token_reward_coef >= 0,
              f"ppo.token_reward_coef={p.token_reward_coef} must be >= 0")
        if p.token_reward_coef:
            _need(r.token_head and p.reward_source == "rm",
                  "ppo.token_reward_coef > 0 reads a token-level reward model: set "
                  "reward.token_head (switch token_rm=on) and ppo.reward_source='rm'")
    if "bon_sft" in stages:
        b = c.bon_sft
        _need(isinstance(b.n, int) and b.n >= 1, f"bon_sft.n={b.n!r} must be an int >= 1")
        _need(isinstance(b.rounds, int) and b.rounds >= 1,
              f"bon_sft.rounds={b.rounds!r} must be an int >= 1")
        _need(b.batch_size % num_devices == 0,
              f"bon_sft.batch_size={b.batch_size} is not divisible by the device count "
              f"{num_devices}")
        _need(b.num_queries % b.batch_size == 0,
              f"bon_sft.num_queries={b.num_queries} is not divisible by bon_sft.batch_size="
              f"{b.batch_size}")
        d["bon_sft_steps"] = b.num_queries // b.batch_size * b.epochs * b.rounds
    if "ul" in stages:
        _need(c.ul.alpha >= 0, f"ul.alpha={c.ul.alpha} must be >= 0")
        _need(c.ul.batch_size % num_devices == 0,
              f"ul.batch_size={c.ul.batch_size} is not divisible by the device count "
              f"{num_devices}")
        _need(c.labels.type == "pairwise" or c.labels.type.startswith("best_of_"),
              f"labels.type={c.labels.type!r}: the ul stage needs a preferred response "
              "(best_of_N or pairwise)")
        _need(has_marks, "the ul stage trains on span marks: set labels.spans.enabled (the "
              "mock span labeller) or read a label file that carries them")
    j = c.eval.judge
    if "eval" in stages and j.enabled:
        _need(j.noise >= 0, f"eval.judge.noise={j.noise} must be >= 0")
        _need(c.labels.gold in SPAN_GOLDS,
              f"eval.judge.enabled: the judge weighs labels.gold={c.labels.gold!r}'s bad "
              f"words; it needs one of {SPAN_GOLDS}")


def _resolve_online(c, stages, num_devices: int) -> int:
    """Validates `labels.online` (enabled); returns the collections PPO will make."""
    import os

    import jax

    o = c.labels.online
    _need(jax.process_count() == 1,
          f"labels.online.enabled runs on a single process, not {jax.process_count()} (the "
          "labeller and the label files live on one host)")
    _need("reward" in stages and "ppo" in stages,
          "labels.online.enabled needs the reward and ppo stages (it retrains the reward "
          "model during PPO)")
    _need(c.ppo.reward_source == "rm",
          f"labels.online.enabled needs ppo.reward_source='rm', got {c.ppo.reward_source!r}")
    for field, low in (("every", 1), ("num_queries", 1), ("max_skips", 1),
                       ("reward_epochs", 1), ("k", 0)):
        value = o[field]
        _need(isinstance(value, int) and not isinstance(value, bool) and value >= low,
              f"labels.online.{field}={value!r} must be an int >= {low}")
    _need(o.poll_seconds > 0, f"labels.online.poll_seconds={o.poll_seconds} must be > 0")
    _need(o.labeler in ("mock", "human"),
          f"labels.online.labeler={o.labeler!r}: expected 'mock' or 'human'")
    _need(o.retrain in ("continue", "reinit"),
          f"labels.online.retrain={o.retrain!r}: expected 'continue' or 'reinit'")
    lt = c.labels.type
    k = {"pairwise": 2, "scalar_compare": 2, "scalar_rating": 1}.get(lt) or int(lt[8:])
    _need(o.k in (0, k), f"labels.online.k={o.k} but labels.type={lt!r} has K={k} "
          "responses per query (0 takes it from labels.type)")
    if o.labeler == "human":
        _need(lt == "pairwise" or lt.startswith("best_of_"),
              f"labels.online.labeler='human' answers comparisons: labels.type={lt!r} must "
              "be best_of_N or pairwise")
        _need(bool(o.db), "labels.online.labeler='human' needs labels.online.db: the label "
              "server's SQLite file (python -m rlhf_jax.labelling.label_server --db FILE)")
        directory = os.path.dirname(os.path.abspath(o.db))
        _need(os.path.isdir(directory),
              f"labels.online.db={o.db!r}: directory {directory} does not exist")
    else:
        _need(c.labels.gold in ("world", "vader"), f"labels.online.labeler='mock' picks by "
              f"the gold reward: labels.gold={c.labels.gold!r} must be 'world' or 'vader'")
    _need(c.labels.batch_size % num_devices == 0,
          f"labels.batch_size={c.labels.batch_size} is not divisible by the device count "
          f"{num_devices}")
    updates = num_updates(c.ppo)
    rounds = (updates - 1) // o.every
    _need(rounds >= 1, f"labels.online.every={o.every}: no collection within the {updates} "
          "PPO updates (one runs before each update whose index is a multiple of it)")
    return rounds


def fixtures_dir() -> str:
    """The repository's small local datasets (tests/fixtures), used by `:runlocal`."""
    import os

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
