"""Scalar heads on a trunk of any architecture (`arch.trunk`): reward model, shared
policy+value, value network.

Param layouts share the trunk's subtree name `transformer`, so a policy's
trunk can seed a reward model (Ziegler: the RM starts from the policy's LM),
and a reward model can seed a value network (Stiennon, docs/implementation_details.md item 16):

  GPT2LMHeadModel      {"transformer"}
  RewardModel          {"transformer", "reward_head", "reward_gain", "reward_bias"
                        [, "scalar_mix" | "selector"] [, "span_head"]}
  PolicyWithValueHead  {"transformer", "value_head"}
  ValueModel           {"transformer", "value_head" [, "scalar_mix"]}
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models import arch

HEAD_TYPES = ("linear", "scalar_mix", "selector")
VALUE_HEAD_TYPES = ("linear", "scalar_mix")  # a value network has no frozen trunk to select from


class ScalarMix(nn.Module):
    """ELMo-style softmax-weighted mix of every layer's hidden state, times a scale.

    Initialised to put all weight on the last layer's (post-ln_f) state, so at
    init a `scalar_mix` head computes what a `linear` head does and the ablation
    measures what the learned mix adds.
    """

    num_states: int

    @nn.compact
    def __call__(self, hidden_states):
        init_w = jnp.full((self.num_states,), -10.0).at[-1].set(10.0)
        w = self.param("weights", lambda _: init_w)
        scale = self.param("scale", nn.initializers.ones, ())
        probs = jax.nn.softmax(w)
        stacked = jnp.stack([h.astype(jnp.float32) for h in hidden_states], axis=0)
        return scale * jnp.einsum("l,l...->...", probs, stacked)


class SelectorHead(nn.Module):
    """Fresh transformer blocks reading chosen middle layers of a frozen trunk.

    The critique of RLHF reward models proposed reading a pretrained model's
    middle layers, where much of a text's meaning is linearly available,
    rather than fine-tuning the whole trunk. Here: a learned softmax mix of
    the hidden states at `layers` (0 = the embeddings; no gradient reaches
    the trunk), then `num_blocks` newly initialised blocks of the trunk's
    architecture (causal self-attention over that mix, padding masked) and a
    final norm;
    the reward head reads the result as it reads the last layer otherwise.
    """

    config: object  # GPT2Config | DecoderConfig
    layers: tuple[int, ...]
    num_blocks: int = 1

    @nn.compact
    def __call__(self, hidden_states, attention_mask_BxT):
        cfg = self.config
        chosen = [jax.lax.stop_gradient(hidden_states[i]) for i in self.layers]
        w = self.param("weights", nn.initializers.zeros, (len(chosen),))  # uniform at init
        x_BxTxD = jnp.einsum("l,l...->...", jax.nn.softmax(w),
                             jnp.stack([h.astype(jnp.float32) for h in chosen]))
        x_BxTxD = x_BxTxD.astype(cfg.dtype)
        for i in range(self.num_blocks):
            x_BxTxD = arch.fresh_block(cfg, f"h_{i}", x_BxTxD, attention_mask_BxT)
        return arch.final_norm(cfg, "ln_f")(x_BxTxD).astype(jnp.float32)


def selector_layers(config, layers=()) -> tuple[int, ...]:
    """`reward.selector_layers`, `()` meaning the middle hidden state."""
    return tuple(int(i) for i in layers) or (config.n_layer // 2,)


def _gather_index(x_BxTxD, index_B):
    return jnp.take_along_axis(x_BxTxD, index_B[:, None, None], axis=1)[:, 0]


def _head_input(module, hidden_states, head_type):
    if head_type == "scalar_mix":
        return ScalarMix(len(hidden_states), name="scalar_mix")(hidden_states)
    return hidden_states[-1].astype(jnp.float32)


def _check_head(head_type, allowed=HEAD_TYPES):
    if head_type not in allowed:
        raise ValueError(f"reward.head={head_type!r}: expected one of {allowed}")


class RewardModel(nn.Module):
    """r(x) = gain * (w . h[index] + b) + bias, with h from the trunk.

    docs/implementation_details.md item 11.

    `w ~ N(0, 1/sqrt(d_model + 1))`, `b = 0`, gain 1 and bias 0 at init; all
    trainable. `reward_index_B` is the position the reward is read at: the last
    token (Ziegler, the default) or the first EOS (Stiennon), chosen by the
    caller. Rewards are float32 [B].

    `head` picks h: the last layer (`linear`), a learned mix of every layer
    (`scalar_mix`), or fresh blocks on chosen middle layers of the frozen
    trunk (`selector`, `SelectorHead`). `token_head` adds a per-token logit
    `span_head(h[t])`: "token t is wrong", trained on span marks (Wu et al.
    2023's token-level reward model, `token_logits`).
    """

    config: object  # GPT2Config | DecoderConfig
    head: str = "linear"
    token_head: bool = False
    selector_layers: tuple[int, ...] = ()
    selector_blocks: int = 1

    def setup(self):
        _check_head(self.head)
        d = self.config.n_embd
        self.transformer = arch.trunk(self.config)
        dense = lambda name: nn.Dense(  # noqa: E731
            1, dtype=jnp.float32, param_dtype=self.config.param_dtype,
            kernel_init=nn.initializers.normal(1.0 / math.sqrt(d + 1)), name=name)
        self.reward_head = dense("reward_head")
        self.reward_gain = self.param("reward_gain", nn.initializers.ones, (), jnp.float32)
        self.reward_bias = self.param("reward_bias", nn.initializers.zeros, (), jnp.float32)
        if self.head == "scalar_mix":
            self.scalar_mix = ScalarMix(self.config.n_layer + 1)
        if self.head == "selector":
            self.selector = SelectorHead(self.config, selector_layers(self.config,
                                                                      self.selector_layers),
                                         self.selector_blocks)
        if self.token_head:
            self.span_head = dense("span_head")

    def __call__(self, input_ids_BxT, attention_mask=None, reward_index_B=None):
        if self.token_head and self.is_initializing():  # create the span head's params too
            return self.rewards_and_token_logits(input_ids_BxT, attention_mask, reward_index_B)[0]
        return self.gain * self.raw_rewards(input_ids_BxT, attention_mask, reward_index_B) + self.bias

    def features(self, input_ids_BxT, attention_mask=None):
        """[B, T, D] float32: what the heads read at every position."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids_BxT.shape, jnp.int32)
        out = self.transformer(input_ids_BxT, attention_mask)
        if self.head == "scalar_mix":
            return self.scalar_mix(out.hidden_states)
        if self.head == "selector":
            return self.selector(out.hidden_states, attention_mask)
        return out.hidden_states[-1].astype(jnp.float32)

    def _read(self, h_BxTxD, reward_index_B):
        b, t = h_BxTxD.shape[:2]
        if reward_index_B is None:
            reward_index_B = jnp.full((b,), t - 1, jnp.int32)
        return self.reward_head(_gather_index(h_BxTxD, reward_index_B))[:, 0]

    def raw_rewards(self, input_ids_BxT, attention_mask=None, reward_index_B=None):
        """The head's output before gain and bias (what normalisation measures)."""
        return self._read(self.features(input_ids_BxT, attention_mask), reward_index_B)

    def token_logits(self, input_ids_BxT, attention_mask=None):
        """[B, T] float32 logits of "token t is marked wrong" (needs `token_head`)."""
        return self.span_head(self.features(input_ids_BxT, attention_mask))[..., 0]

    def rewards_and_token_logits(self, input_ids_BxT, attention_mask=None, reward_index_B=None):
        """`(rewards_B, token_logits_BxT)` from one trunk pass."""
        h_BxTxD = self.features(input_ids_BxT, attention_mask)
        rewards_B = self.gain * self._read(h_BxTxD, reward_index_B) + self.bias
        return rewards_B, self.span_head(h_BxTxD)[..., 0]

    @property
    def gain(self):
        return self.reward_gain

    @property
    def bias(self):
        return self.reward_bias


class PolicyWithValueHead(nn.Module):
    """Ziegler's shared model: one trunk, a tied LM head and a zero-initialised value head.

    Returns the trunk's output with `.logits` [B,T,V] and `values` [B,T]; the
    value for response token t is read at position ctx - 1 + t by the caller
    (docs/implementation_details.md item 17).
    """

    config: object  # GPT2Config | DecoderConfig

    def setup(self):
        self.transformer = arch.trunk(self.config)
        self.value_head = nn.Dense(
            1,
            dtype=jnp.float32,
            param_dtype=self.config.param_dtype,
            kernel_init=nn.initializers.zeros,
            name="value_head",
        )

    def __call__(self, input_ids_BxT, attention_mask=None, position_ids=None, cache=None, cache_index=None):
        out = self.transformer(input_ids_BxT, attention_mask, position_ids, cache, cache_index)
        h_BxTxD = out.hidden_states[-1]
        return out.replace(logits=self.lm_logits(h_BxTxD)), self.value_head(h_BxTxD.astype(jnp.float32))[..., 0]

    def lm_logits(self, h_BxTxD):
        return arch.lm_logits(self.transformer, self.config, h_BxTxD)


class ValueModel(nn.Module):
    """Stiennon's separate value network: a trunk and a scalar head, values [B,T]."""

    config: object  # GPT2Config | DecoderConfig
    head: str = "linear"

    @nn.compact
    def __call__(self, input_ids_BxT, attention_mask=None):
        _check_head(self.head, VALUE_HEAD_TYPES)
        out = arch.trunk(self.config, name="transformer")(input_ids_BxT, attention_mask)
        h_BxTxD = _head_input(self, out.hidden_states, self.head)
        head = nn.Dense(1, dtype=jnp.float32, param_dtype=self.config.param_dtype,
                        kernel_init=nn.initializers.zeros, name="value_head")
        return head(h_BxTxD)[..., 0]


def value_params_from_reward(rm_params: dict) -> dict:
    """A ValueModel's params initialised from a RewardModel's (Stiennon).

    The RM's gain and bias fold into the value head, so at init the value at
    every position is the reward the RM would give if read there.
    """
    gain, bias = rm_params["reward_gain"], rm_params["reward_bias"]
    head = rm_params["reward_head"]
    params = {
        "transformer": rm_params["transformer"],
        "value_head": {"kernel": head["kernel"] * gain, "bias": head["bias"] * gain + bias},
    }
    if "scalar_mix" in rm_params:
        params["scalar_mix"] = rm_params["scalar_mix"]
    return params
