"""Per-device memory of a config on its mesh, computed from shapes alone.

`launch.py --dry_run` prints `format_report(report(cfg, num_devices))`: for
each model of the PPO stage (policy, value, reference, reward model) its
params and optimizer state per device after FSDP splitting, then the PPO
update's activations, gradients and gathered weights, the rollout's KV cache,
and the peak; then the peak of every stage the config runs (`StageMemory`:
the models the stage holds plus its largest step, sampling or training, from
the same per-token model), and the largest of them. Nothing is allocated: param shapes come from `jax.eval_shape`
of the models' `init`, the split of each leaf from `fsdp.shard_dim`, the rest
from the formulas below.

The activation model counts, per token and block, 19 `D`-wide tensors in the
compute dtype and 3 `H x T` float32 attention tensors (scores, masked scores,
probabilities) kept for the backward pass. The backward pass's own inputs
are 12 `D` (the block input, layer-norm outputs, q/k/v, the attention output,
the residual, the 4D-wide input of the checkpointed gelu); XLA keeps about 7
more (centred layer-norm inputs, pre-bias sums): 19 is the per-layer slope of
XLA's CPU temp size, and `tests/test_memory.py` checks the whole update
against `compiled.memory_analysis()`. TPU fuses more, so the estimate errs
high there; XLA's CPU backend computes bfloat16 elementwise math in float32,
so the halving bfloat16 compute brings is a TPU number too.

Without remat the gradients are counted full size and, under FSDP, every
trained weight gathered (all live until the update, as on CPU). With
`model.remat` only each block's input is kept, one block is recomputed at a
time, and (FSDP) a block's weights are gathered again in the backward pass and
its gradients reduce-scattered as they are made: two blocks' weights and
gradients in flight. XLA's CPU backend does not realise the remat saving (its
temp size is the same with and without), so that half is modelled for TPU and
is not checkable here; `compiled_update_step` asks the compiler of the
machine it runs on (a TPU VM gives the TPU's numbers).

The Llama family (`model.arch`, or a Llama / Qwen checkpoint) is sized by
the same per-token model with its own block and embedding parameter counts
and a KV cache of its key/value heads only (grouped-query attention); its
wider SwiGLU MLP keeps more than GPT-2's 4D, so the report errs low
(measured on CPU: 0.96 of XLA's footprint for Llama, 0.85 for Qwen3 with
q/k norms; `tests/test_decoder.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import config_lib
from rlhf_jax.algorithms.ppo import Rollout, make_update_step
from rlhf_jax.data.labels import parse_label_type
from rlhf_jax.infra import fsdp, parallel
from rlhf_jax.models import loading
from rlhf_jax.models import arch
from rlhf_jax.models.arch import causal_lm
from rlhf_jax.models.heads import PolicyWithValueHead, RewardModel, ValueModel
from rlhf_jax.stages import reward_train, supervised, train_ppo
from rlhf_jax.stages.rollout import PPOModels
from rlhf_jax.stages.train_ppo import hparams, init_state

_BYTES = {"float32": 4, "bfloat16": 2}
# Per token and layer: D-wide tensors kept for the backward pass, and H x T ones.
BLOCK_D_TENSORS = 19
BLOCK_HT_TENSORS = 3
# The LM head's float32 [rows, R, V] tensors: logits, log-softmax, probabilities, gradient.
HEAD_V_TENSORS = 4


@dataclasses.dataclass(frozen=True)
class ModelMemory:
    """One model's per-device bytes: params and (trained models) Adam state."""

    name: str
    trained: bool
    num_params: int
    params: int  # bytes per device, after fsdp splitting
    optimizer: int  # Adam m and v, split like the params; 0 when frozen
    full_params: int  # bytes of one unsplit copy (what gathering materialises)


@dataclasses.dataclass(frozen=True)
class Report:
    """Per-device bytes of the PPO stage for a config on a (data x fsdp) mesh."""

    mesh: tuple[int, int]  # (data, fsdp)
    arch: str  # where the model dims came from
    models: tuple[ModelMemory, ...]
    update_rows: int  # PPO minibatch rows per device
    rollout_rows: int  # rollout rows per device
    context: int  # query + response tokens
    activations: int  # PPO update: forward activations kept for the backward pass
    gradients: int  # trained models' gradients (full size until reduce-scattered)
    gathered: int  # FSDP: weights all-gathered for the update beyond the local slices
    batch: int  # the rollout batch all-gathered for the minibatch permutation
    kv_cache: int  # rollout sampling's KV cache
    rollout_activations: int  # rollout: scoring passes' intermediates (+ gathered blocks)
    remat: bool = False
    stages: tuple = ()  # a `StageMemory` per stage of the config

    @property
    def peak_stage(self) -> "StageMemory | None":
        """The stage with the largest peak (None without stages)."""
        return max(self.stages, key=lambda s: s.peak, default=None)

    @property
    def params(self) -> int:
        return sum(m.params for m in self.models)

    @property
    def optimizer(self) -> int:
        return sum(m.optimizer for m in self.models)

    @property
    def update_step(self) -> int:
        """The PPO update's footprint: its arguments (trained params, optimizer
        state) plus its temporaries. What `memory_analysis()` of the compiled
        update reports as argument + temp bytes."""
        trained = sum(m.params + m.optimizer for m in self.models if m.trained)
        return trained + self.activations + self.gradients + self.gathered + self.batch

    @property
    def peak(self) -> int:
        """Every model resident, plus the larger of the update's and the rollout's temporaries."""
        update_temp = self.activations + self.gradients + self.gathered + self.batch
        rollout_temp = self.kv_cache + self.rollout_activations
        return self.params + self.optimizer + max(update_temp, rollout_temp)


def param_shapes(module) -> dict:
    """The params of a Flax model as `ShapeDtypeStruct`s (`jax.eval_shape`: no allocation)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(module.init, jax.random.key(0), ids)["params"]


def split_bytes(shapes, fsdp_size: int) -> tuple[int, int, int]:
    """`(num_params, bytes per device after splitting, unsplit bytes)` of a param tree."""
    count = per_device = full = 0
    for x in jax.tree.leaves(shapes):
        n = int(np.prod(x.shape))
        nbytes = n * jnp.dtype(x.dtype).itemsize
        count, full = count + n, full + nbytes
        split = fsdp.shard_dim(x.shape, x.dtype, fsdp_size) is not None
        per_device += nbytes // fsdp_size if split else nbytes
    return count, per_device, full


def _model(name, shapes, fsdp_size, trained) -> ModelMemory:
    count, per_device, full = split_bytes(shapes, fsdp_size)
    return ModelMemory(name=name, trained=trained, num_params=count, params=per_device,
                       optimizer=2 * per_device if trained else 0, full_params=full)


def block_bytes_per_token(config, context: int) -> int:
    """Bytes one transformer block keeps per token for its backward pass (no remat)."""
    compute = jnp.dtype(config.dtype).itemsize
    return (BLOCK_D_TENSORS * config.n_embd * compute
            + BLOCK_HT_TENSORS * config.n_head * context * 4)


def block_param_bytes(config) -> int:
    """Bytes of one block's weights in the param dtype."""
    return arch.block_num_params(config) * jnp.dtype(config.param_dtype).itemsize


def report(cfg, num_devices: int) -> Report:
    """The per-device memory of the config's PPO stage on `num_devices` devices,
    and (`Report.stages`) the peak of every stage the config runs.

    Reads `model.*`, `parallel.fsdp`, `task.query_length`,
    `task.response_length`, `ppo.batch_size`, `ppo.nminibatches`,
    `ppo.value_model`, `ppo.reward_source`, `reward.head`, and for the stages
    the batch sizes of `pretrain`, `sft`, `labels`, `reward`, `dpo`, `eval`. The
    config must have passed `config_check.resolve` (sizes divide).
    """
    f = cfg.parallel.fsdp  # 1 unless parallel.mode='mesh' (config_check.resolve)
    config, arch = loading.architecture(cfg)
    q, r = cfg.task.query_length, cfg.task.response_length
    context = q + r
    separate = cfg.ppo.value_model == "separate"
    lm = param_shapes(causal_lm(config))  # {"transformer": ...}
    if separate:  # Stiennon: the LM, and a value network from the reward model
        models = [_model("policy", lm, f, True),
                  _model("value", param_shapes(ValueModel(config, head=cfg.reward.head)), f,
                         True)]
    else:  # Ziegler: one trunk with the LM head and a value head
        models = [_model("policy + value head", param_shapes(PolicyWithValueHead(config)), f,
                         True)]
    models.append(_model("reference", lm, f, False))
    if cfg.ppo.reward_source == "rm":
        models.append(_model("reward model",
                             param_shapes(RewardModel(config, head=cfg.reward.head)), f, False))

    trunks = 2 if separate else 1
    batch = cfg.ppo.batch_size
    rows = batch // cfg.ppo.nminibatches // num_devices
    trained = [m for m in models if m.trained]
    # The LM head on the R response positions only.
    activations, gradients, gathered = step_temporaries(config, f, trained, trunks, rows,
                                                        context, logit_positions=r)
    # The rollout all-gathered for the global permutation: query, mask (int32),
    # response, mask, logprobs, values, advantages, returns (4 bytes each).
    batch_bytes = batch * (2 * q + 6 * r) * 4
    rollout_rows = batch // num_devices
    kv, rollout_act = sampling_temporaries(cfg, config, f, rollout_rows, context,
                                           logit_positions=r)
    rep = Report(mesh=(num_devices // f, f), arch=arch, models=tuple(models),
                 update_rows=rows, rollout_rows=rollout_rows, context=context,
                 activations=activations, gradients=gradients, gathered=gathered,
                 batch=batch_bytes, kv_cache=kv, rollout_activations=rollout_act,
                 remat=config.remat)
    return dataclasses.replace(rep, stages=stage_report(cfg, num_devices, config, rep))


def step_temporaries(config, f: int, trained, trunks: int, rows: int,
                     context: int, logit_positions: int) -> tuple[int, int, int]:
    """`(activations, gradients, gathered weights)` of one training step per device.

    `rows` sequences of `context` tokens through `trunks` trained trunks, the LM
    head at `logit_positions` of them (0: a scalar head only); `trained` are the
    `ModelMemory`s whose gradients are taken.
    """
    compute = jnp.dtype(config.dtype).itemsize
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    tokens = rows * context
    per_block = block_bytes_per_token(config, context)
    if config.remat:
        kept = trunks * layers * tokens * d * compute + tokens * per_block
    else:
        kept = trunks * layers * tokens * per_block
    # Embedding sum, final layer norm in and out, per trunk; the LM head.
    activations = (kept + trunks * 3 * tokens * d * compute
                   + HEAD_V_TENSORS * rows * logit_positions * vocab * 4)
    param_bytes = jnp.dtype(config.param_dtype).itemsize
    # wte + wpe (GPT-2) or the token embedding and an untied LM head, unsplit
    embeddings = arch.embedding_num_params(config) * param_bytes
    # A block's weights gathered and prefetched, and its full-size gradients before
    # the reduce-scatter: two blocks' worth per trained trunk, plus the embeddings.
    in_flight = trunks * (2 * block_param_bytes(config) + embeddings)
    if config.remat:  # backward block by block: gradients leave as they are made
        gradients = sum(m.params for m in trained) + in_flight
        gathered = in_flight if f > 1 else 0
    else:  # everything kept for the backward pass, gradients full size until the update
        gradients = sum(m.full_params for m in trained)
        gathered = sum(m.full_params - m.params for m in trained)
    return activations, gradients, gathered


def sampling_temporaries(cfg, config, f: int, rows: int, context: int,
                         logit_positions: int) -> tuple[int, int]:
    """`(KV cache, forward activations)` of sampling `rows` sequences per device and
    scoring them with forward passes (the LM head at `logit_positions`)."""
    layers, vocab = config.n_layer, config.vocab_size
    kv_dtype = getattr(jnp, cfg.model.kv_cache_dtype or cfg.model.dtype)
    kv_width = arch.kv_heads(config) * config.head_dim  # grouped-query: the K/V heads only
    kv = 2 * layers * rows * context * kv_width * jnp.dtype(kv_dtype).itemsize
    # Passes over the whole context keep about one block's intermediates at a time.
    act = (rows * context * block_bytes_per_token(config, context)
           + 3 * rows * max(logit_positions, 1) * vocab * 4)
    if f > 1:  # forward only: a block's weights are dropped after their use
        act += (2 * block_param_bytes(config)
                + arch.embedding_num_params(config) * jnp.dtype(config.param_dtype).itemsize)
    return kv, act


@dataclasses.dataclass(frozen=True)
class StageMemory:
    """One stage's per-device peak: the models it holds, plus its largest temporaries."""

    stage: str
    resident: int  # params (and Adam state of trained models) held through the stage
    temporaries: int  # the largest step's activations, gradients, KV cache
    what: str  # the models and shapes behind the numbers

    @property
    def peak(self) -> int:
        return self.resident + self.temporaries


def _responses_per_label(label_type: str) -> int:
    if label_type.startswith("best_of_"):
        return int(label_type[8:])
    return 1 if label_type == "scalar_rating" else 2


def stage_report(cfg, num_devices: int, config, ppo: Report) -> tuple:
    """A `StageMemory` for each stage of the config with models (all but figures)."""
    f = cfg.parallel.fsdp  # 1 unless parallel.mode='mesh' (config_check.resolve)
    lm = _model("LM", param_shapes(causal_lm(config)), f, True)
    rm = _model("RM", param_shapes(RewardModel(config, head=cfg.reward.head)), f, True)
    frozen = lambda m: m.params  # noqa: E731
    trained = lambda m: m.params + m.optimizer  # noqa: E731
    q, r = cfg.task.query_length, cfg.task.response_length
    ctx = q + r
    out = []

    def train_stage(stage, models, group_batch, per_row, context, logit_positions,
                    resident_extra=0, extra_what=""):
        rows = group_batch // num_devices * per_row
        temps = sum(step_temporaries(config, f, [models[0]], 1, rows, context, logit_positions))
        out.append(StageMemory(stage, sum(trained(m) for m in models) + resident_extra, temps,
                               f"trained {models[0].name}: {rows} rows x {context} tokens"
                               + extra_what))

    def sampling(rows):
        return sum(sampling_temporaries(cfg, config, f, rows, ctx, logit_positions=r))

    for stage in config_lib.stage_list(cfg):
        if stage == "pretrain":
            p = cfg.pretrain
            train_stage(stage, [lm], p.batch_size, 1, p.seq_len, p.seq_len)
        elif stage == "sft":
            train_stage(stage, [lm], cfg.sft.batch_size, 1, ctx, ctx)
        elif stage == "labels" and cfg.labels.source == "mock":
            rows = cfg.labels.batch_size // num_devices
            out.append(StageMemory(stage, frozen(lm), sampling(rows),
                                   f"policy, sampling {rows} rows x {ctx} tokens"))
        elif stage == "reward":
            k = _responses_per_label(cfg.labels.type)
            normalising = (cfg.reward.normalize_mode == "gain_bias"
                           and (cfg.reward.normalize_before or cfg.reward.normalize_after))
            rows = cfg.reward.batch_size // num_devices * k
            step = sum(step_temporaries(config, f, [rm], 1, rows, ctx, 0))
            what = f"trained RM: {rows} rows x {ctx} tokens"
            if normalising:  # the reference policy samples between the RM's steps
                rollout = cfg.reward.rollout_batch_size // num_devices
                what += f"; policy sampling {rollout} rows for the normalisation"
                step = max(step, sampling(rollout))
            out.append(StageMemory(stage, trained(rm) + (frozen(lm) if normalising else 0),
                                   step, what))
        elif stage == "ppo":
            update_temp = ppo.activations + ppo.gradients + ppo.gathered + ppo.batch
            out.append(StageMemory(stage, ppo.params + ppo.optimizer,
                                   max(update_temp, ppo.kv_cache + ppo.rollout_activations),
                                   "the table above"))
        elif stage == "dpo":
            train_stage(stage, [lm], cfg.dpo.batch_size, 2, ctx, ctx,
                        resident_extra=frozen(lm), extra_what=" + frozen reference")
        elif stage == "eval":
            stages = config_lib.stage_list(cfg)
            policies = 1 + ("ppo" in stages) + ("dpo" in stages)
            scored = "reward" in stages or cfg.ppo.reward_source == "rm"
            rows = cfg.eval.batch_size // num_devices
            out.append(StageMemory(stage, policies * frozen(lm) + (frozen(rm) if scored else 0),
                                   sampling(rows), f"{policies} policies"
                                   + (" + RM" if scored else "")
                                   + f", sampling {rows} rows x {ctx} tokens"))
    return tuple(out)


def compiled_update_step(cfg, dp) -> tuple[int, object]:
    """XLA's own per-device footprint of the config's PPO update on `dp`'s devices.

    Compiles the real update step (`ppo.make_update_step` under `dp.compile`)
    for abstract inputs: nothing is allocated, and on a TPU VM this gives the
    TPU compiler's numbers for a pod config. Returns `(argument + temp bytes,
    the `memory_analysis()` object)`.
    """
    config, _ = loading.architecture(cfg)
    if cfg.ppo.value_model == "separate":
        lm = causal_lm(config)
        value = ValueModel(config, head=cfg.reward.head)
        models = PPOModels(policy=lm, reference=lm, value=value)
        params = {"policy": param_shapes(lm), "value": param_shapes(value)}
    else:
        policy = PolicyWithValueHead(config)
        models = PPOModels(policy=policy, reference=causal_lm(config))
        params = {"policy": param_shapes(policy)}
    optimizer = train_ppo.make_optimizer(cfg.ppo)
    step = dp.compile(make_update_step(models.apply_policy_value, optimizer, hparams(cfg),
                                       dp.batch_axes),
                      (parallel.REP, parallel.SHARD), (parallel.REP, parallel.REP),
                      donate_argnums=(0,))
    state = dp.step_shapes(jax.eval_shape(lambda p: init_state(p, optimizer, cfg), params),
                           parallel.REP)
    b, q, r = cfg.ppo.batch_size, cfg.task.query_length, cfg.task.response_length

    def arr(*shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct((b, *shape), dtype)

    i32 = jnp.int32
    rollout = Rollout(query_BxQ=arr(q, dtype=i32), query_mask_BxQ=arr(q, dtype=i32),
                      response_BxR=arr(r, dtype=i32), response_mask_BxR=arr(r, dtype=i32),
                      logprobs_BxR=arr(r), ref_logprobs_BxR=arr(r), values_BxR=arr(r),
                      scores_B=arr(), score_index_B=arr(dtype=i32))
    rollout = dp.step_shapes(rollout, parallel.SHARD)
    analysis = step.lower(state, rollout).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes, analysis


def compiled_reward_step(cfg, dp) -> tuple[int, object]:
    """XLA's own per-device footprint of the config's reward-model training step.

    The real step (`supervised`'s train step on `reward`'s loss, under
    `dp.compile`) compiled for abstract inputs, as `compiled_update_step`.
    Returns `(argument + temp bytes, the memory_analysis() object)`.
    """
    import functools

    config, _ = loading.architecture(cfg)
    rm = RewardModel(config, head=cfg.reward.head)
    kind, _ = parse_label_type(cfg.labels.type)
    k = _responses_per_label(cfg.labels.type)
    eos = cfg.task.eos_token if cfg.reward.reward_at == "eos" else None
    loss = functools.partial(reward_train._loss_fn, rm_model=rm, label_type=kind,
                             reward_at=cfg.reward.reward_at, eos_token=eos,
                             span_coef=float(cfg.reward.span_coef))
    g = cfg.reward
    optimizer, _ = supervised.loop_optimizer(config_lib.LoopConfig.from_config(cfg, "reward"), 10)
    # A run is a group of one: the member axis leads the state, follows the batch's rows.
    train_step, _ = supervised.member_steps(loss, optimizer, 1)
    step = dp.compile(train_step, (parallel.REP, parallel.SHARD, parallel.REP),
                      (parallel.REP, parallel.REP), donate_argnums=(0,))
    state = jax.eval_shape(lambda p: jax.tree.map(lambda x: x[None], supervised.TrainState(
        params=p, opt_state=optimizer.init(p), rng=jax.random.key(0),
        step=jnp.zeros((), jnp.int32))), param_shapes(rm))
    state = dp.step_shapes(state, parallel.REP)
    scale = dp.step_shapes(jax.ShapeDtypeStruct((1,), jnp.float32), parallel.REP)
    b, q, r = g.batch_size, cfg.task.query_length, cfg.task.response_length
    target = jnp.float32 if kind in ("scalar_rating", "scalar_compare") else jnp.int32
    batch = {name: jax.ShapeDtypeStruct((b, 1, *shape), dtype)
             for name, shape, dtype in (("query", (q,), jnp.int32), ("query_mask", (q,), jnp.int32),
                                        ("responses", (k, r), jnp.int32),
                                        ("response_mask", (k, r), jnp.int32),
                                        ("target", (), target))}
    batch = dp.step_shapes(batch, parallel.SHARD)
    analysis = step.lower(state, batch, scale).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes, analysis


def format_report(rep: Report) -> str:
    """The table `launch.py --dry_run` prints (GiB, or MiB when the peak is under 1 GiB)."""
    largest = max([rep.peak] + [st.peak for st in rep.stages])
    scale, unit = (2**30, "GiB") if largest >= 2**30 else (2**20, "MiB")

    def size(n: int) -> str:
        return f"{n / scale:10.2f} {unit}"

    data, f = rep.mesh
    if rep.stages and "ppo" not in [st.stage for st in rep.stages]:
        lines = [f"mesh data={data} x fsdp={f} (dims from {rep.arch})"]
    else:
        lines = _ppo_lines(rep, size)
    if rep.stages:
        lines.append("memory per device, every stage (resident models + the largest step):")
        for st in rep.stages:
            lines.append(f"  {st.stage:<10}{size(st.peak)}   {st.what}")
        top = rep.peak_stage
        lines.append(f"  all stages{size(top.peak)}   the largest: {top.stage}")
    return "\n".join(lines)


def _ppo_lines(rep: Report, size) -> list[str]:
    data, f = rep.mesh
    lines = [f"memory per device, PPO stage, mesh data={data} x fsdp={f} "
             f"(dims from {rep.arch}):",
             f"  {'model':<22}{'params':>15}{'Adam state':>15}{'parameters':>16}"]
    for m in rep.models:
        lines.append(f"  {m.name:<22}{size(m.params):>15}{size(m.optimizer):>15}"
                     f"{m.num_params:>16,}")
    lines += [
        f"  {'all models':<22}{size(rep.params):>15}{size(rep.optimizer):>15}",
        f"  update activations    {size(rep.activations)}   {rep.update_rows} rows x "
        f"{rep.context} tokens per device",
        f"  update gradients      {size(rep.gradients)}   "
        + ("local slices + two blocks in flight (remat)" if rep.remat
           else "full size until the update"),
        f"  fsdp gathered weights {size(rep.gathered)}   "
        + ("two blocks + embeddings per trunk (remat)" if rep.remat
           else "every trained weight, kept for the backward pass"),
        f"  gathered rollout      {size(rep.batch)}",
        f"  rollout KV cache      {size(rep.kv_cache)}   {rep.rollout_rows} rows x "
        f"{rep.context} tokens per device",
        f"  rollout activations   {size(rep.rollout_activations)}",
        f"  update step           {size(rep.update_step)}   trained state + update temporaries",
        f"  peak                  {size(rep.peak)}   all models + the larger phase",
    ]
    return lines
