"""A Hugging Face causal language model as a :class:`agents.policies.Policy` for the text envs.

Observations are those of :class:`envs.text.TextGenerationEnv`: a dict with ``"input_ids"`` and
``"attention_mask"`` ``[N, L]``, *left-padded* so each row's newest token is its last entry (the
trainer's buffer may hand them over as float tensors; they are cast back to integers). The action
is the next token; its distribution is the LM's softmax over the first ``action_dim`` logits (the
env's ``Discrete(len(tokenizer))``; extra embedding rows of the model are never sampled).

Two forward paths, equal up to float rounding (tested to 1e-5):

- **Cached** (:meth:`CausalLMPolicy.act`, and :meth:`~CausalLMPolicy.log_prob` of a
  :func:`frozen_reference`): a key/value cache follows a batch of episodes across steps. A row
  whose observation is the previous one plus one token costs one token of compute; a row that
  started a new episode (vector-env autoreset) has its prompt prefilled and spliced into the
  batch cache. So rollouts never recompute the whole prefix per token.
- **Full** (:meth:`~CausalLMPolicy.evaluate`, :meth:`~CausalLMPolicy.value` and ``log_prob``
  with gradients): one forward over the (trimmed) window, for PPO minibatches in any order.
  Rows that are prefixes of another row in the batch (earlier steps of the same episode) are
  read off that row's forward, so a minibatch costs one forward per episode it touches.

The value is a linear head on the LM's final hidden state at the last position (shared trunk).

Quick start (any local model directory; ``envs.text.load_lm`` checks the tokenizer/model pair)::

    model, tokenizer = envs.text.load_lm("runs/default_lm")
    env = gym.make_vec("prefenv/TextSentiment-v0", num_envs=8, vectorization_mode="sync",
                       tokenizer=tokenizer)
    policy = CausalLMPolicy(model, action_dim=env.single_action_space.n)
    agent = PPOKL(env, PPOKLConfig(kl_coef=0.1, gamma=1.0), policy=policy,
                  ref_policy=frozen_reference(policy))

The caches hold keys/values of the *current* parameters: ``evaluate``/``log_prob`` with gradients
(a training step) and ``load_state_dict`` drop them, so after a PPO update the next rollout step
re-prefills every row instead of reusing stale keys/values.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from agents.policies import Obs, categorical_log_prob_entropy

__all__ = ["CausalLMPolicy", "frozen_reference"]


def _obs_tensors(obs: Obs, device: torch.device) -> tuple[Tensor, Tensor]:
    """``input_ids`` and ``attention_mask`` as int64 ``[N, L]`` on ``device``."""
    if not isinstance(obs, dict) or "input_ids" not in obs or "attention_mask" not in obs:
        raise TypeError(
            "CausalLMPolicy needs dict observations with 'input_ids' and 'attention_mask' (the "
            "observation of envs.text.TextGenerationEnv)"
        )
    ids = obs["input_ids"].to(device=device).long()
    mask = (obs["attention_mask"].to(device=device) > 0).long()
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be [N, L], got {tuple(ids.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if not bool(mask[:, -1].all()):
        raise ValueError(
            "observations must be left-padded with the newest token last (attention_mask[:, -1] "
            "== 1), as TextGenerationEnv produces them; got a row whose last position is padding"
        )
    return ids, mask


def _positions(mask: Tensor) -> Tensor:
    """Position ids ``[N, L]`` that count real tokens only (left padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class _KVState:
    """Key/value cache of a batch of episodes after the last cached call.

    Attributes:
        ids, mask: ``[N, L]`` the observation the cache covers (masked ids, 0 on padding).
        lengths: ``[N]`` real tokens per row.
        cache: a ``transformers.DynamicCache`` whose per-layer keys/values
            ``[N, heads, C, head_dim]`` are right-aligned: row i's ``lengths[i]`` entries are its
            last columns, the columns before are zeros. The model extends it in place.
        cache_mask: ``[N, C]`` 1 where the cache holds a real token.
    """

    ids: Tensor
    mask: Tensor
    lengths: Tensor
    cache: Any
    cache_mask: Tensor

    @property
    def layers(self) -> list[tuple[Tensor, Tensor]]:
        return _layers(self.cache)


class CausalLMPolicy(nn.Module):
    """Causal LM + scalar value head implementing the Policy protocol (act/evaluate/log_prob/value).

    Args:
        model: a Hugging Face causal LM (``AutoModelForCausalLM``; e.g. from
            :func:`envs.text.load_lm`). Sliding-window attention is supported only while the
            observation window fits inside it (checked).
        action_dim: number of actions, the env's ``action_space.n`` (= ``len(tokenizer)``);
            None = the model's output size. Must not exceed the model's output rows.
        incremental_log_prob: let :meth:`log_prob` use the key/value cache when called without
            gradients (what the trainer does with the frozen reference at every rollout step).
            :func:`frozen_reference` turns it on.
    """

    def __init__(
        self, model: nn.Module, action_dim: int | None = None, incremental_log_prob: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        head = model.get_output_embeddings()
        if head is None:
            raise TypeError(f"{type(model).__name__} has no output embeddings: not a causal LM")
        n_rows = int(head.weight.shape[0])
        self.action_dim = n_rows if action_dim is None else int(action_dim)
        if not 0 < self.action_dim <= n_rows:
            raise ValueError(
                f"action_dim={self.action_dim} but the model has {n_rows} output rows: the env's "
                "vocabulary (len(tokenizer)) is larger than the model's, so some actions would have "
                "no logit; use the tokenizer the model was trained with (envs.text.load_lm checks "
                "the pair)"
            )
        config = model.config.get_text_config()
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.sliding_window = _sliding_window(config)
        self.value_head = nn.Linear(int(config.hidden_size), 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.incremental_log_prob = incremental_log_prob
        self._act_state: _KVState | None = None
        self._log_prob_state: _KVState | None = None

    @property
    def lm_head(self) -> nn.Module:
        """The output embedding (hidden -> logits); not a separate submodule of the policy."""
        return self.model.get_output_embeddings()

    @property
    def base(self) -> nn.Module:
        """The transformer trunk (``model.base_model``): ids -> final hidden states."""
        return self.model.base_model

    def reset_cache(self) -> None:
        """Forget the cached episodes (the next cached call prefills every row).

        Called automatically by ``evaluate``/``log_prob`` with gradients and by
        ``load_state_dict``; call it yourself after changing parameters any other way.
        """
        self._act_state = self._log_prob_state = None

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.reset_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ forward paths

    def _device(self) -> torch.device:
        return self.lm_head.weight.device

    def _check_window(self, mask: Tensor) -> None:
        longest = int(mask.sum(-1).max())
        if self.max_positions is not None and longest > self.max_positions:
            raise ValueError(
                f"an observation holds {longest} tokens but the model has only "
                f"{self.max_positions} positions: lower the env's max_prompt_tokens + "
                "max_new_tokens or use a model with a longer context"
            )
        if self.sliding_window is not None and longest > self.sliding_window:
            raise ValueError(
                f"an observation holds {longest} tokens, more than the model's sliding attention "
                f"window of {self.sliding_window}: CausalLMPolicy's cache supports full attention "
                "only; keep max_prompt_tokens + max_new_tokens <= the window"
            )

    def full_hidden(self, obs: Obs) -> Tensor:
        """Final hidden state ``[N, D]`` at each row's last token, from one full forward.

        Rows whose tokens are a prefix of another row's (steps of one episode in a PPO
        minibatch) are read off that row's forward at their own last position: causal attention
        makes this exact, and only the longest row of each family is computed.
        """
        ids, mask = _obs_tensors(obs, self._device())
        self._check_window(mask)
        first = int(mask.any(0).long().argmax())  # drop columns that are padding in every row
        ids, mask = ids[:, first:], mask[:, first:]
        lengths = mask.sum(-1)
        host = _prefix_hosts(ids, lengths)
        hosts, row_of_host = torch.unique(host, return_inverse=True)
        out = self.base(
            input_ids=ids[hosts],
            attention_mask=mask[hosts],
            position_ids=_positions(mask[hosts]),
            use_cache=False,
        )
        width = ids.shape[1]
        # Row r's last token sits at column width - len(host) + len(r) - 1 of its host's row.
        column = width - lengths[host] + lengths - 1
        return out.last_hidden_state[row_of_host, column]

    def cached_hidden(self, obs: Obs, which: str = "act") -> Tensor:
        """Final hidden state ``[N, D]`` at each row's last token, extending a key/value cache.

        ``which`` names the cache (``"act"`` or ``"log_prob"``), so a policy and its reference
        can follow the same episodes independently. Runs without gradients.
        """
        ids, mask = _obs_tensors(obs, self._device())
        self._check_window(mask)
        attr = "_act_state" if which == "act" else "_log_prob_state"
        with torch.no_grad():
            state = _extend(self.base, getattr(self, attr), ids, mask)
            setattr(self, attr, state.state)
        return state.hidden

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)[:, : self.action_dim].float()

    # ------------------------------------------------------------------ Policy protocol

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Next tokens ``[N]``, their log-probs ``[N]`` and values ``[N]`` (cached path)."""
        hidden = self.cached_hidden(obs, "act")
        logits = self._logits(hidden)
        if deterministic:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
        log_probs, _ = categorical_log_prob_entropy(logits, actions)
        return actions, log_probs, self.value_head(hidden.float()).squeeze(-1)

    def evaluate(self, obs: Obs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``[N]``, entropies ``[N]`` and values ``[N]`` with gradients (full path).

        With gradients enabled this is a training step in the making, so the rollout caches are
        dropped: keys/values computed with the old parameters must not serve the updated policy.
        """
        if torch.is_grad_enabled():
            self.reset_cache()
        hidden = self.full_hidden(obs)
        log_probs, entropy = categorical_log_prob_entropy(self._logits(hidden), actions.long())
        return log_probs, entropy, self.value_head(hidden.float()).squeeze(-1)

    def log_prob(self, obs: Obs, actions: Tensor) -> Tensor:
        """Log-probs ``[N]`` of ``actions``: cached path if ``incremental_log_prob`` and no grad."""
        if not torch.is_grad_enabled():
            cached = self.incremental_log_prob
            hidden = self.cached_hidden(obs, "log_prob") if cached else self.full_hidden(obs)
        else:
            self.reset_cache()  # a training step (e.g. behaviour cloning): caches go stale
            hidden = self.full_hidden(obs)
        return categorical_log_prob_entropy(self._logits(hidden), actions.long())[0]

    def value(self, obs: Obs) -> Tensor:
        """Values ``[N]`` (full path)."""
        return self.value_head(self.full_hidden(obs).float()).squeeze(-1)


def _prefix_hosts(ids: Tensor, lengths: Tensor, chunk: int = 256) -> Tensor:
    """For each row, the longest row (lowest index on ties) whose tokens start with its tokens.

    ``ids`` ``[N, W]`` left-padded with ``lengths`` ``[N]`` real tokens. Returns ``[N]`` row
    indices; a row nobody extends is its own host. The chosen hosts are maximal: a host is never
    a prefix of a longer row.
    """
    n, width = ids.shape
    j = torch.arange(width, device=ids.device)
    # Left-align the real tokens: aligned[r, j] = j-th token of row r, -1 past its end.
    src = (width - lengths).unsqueeze(1) + j
    inside = j < lengths.unsqueeze(1)
    aligned = torch.where(inside, ids.gather(1, src.clamp(max=width - 1)), -1)
    rank = lengths * n + (n - 1 - torch.arange(n, device=ids.device))  # longer first, then lower
    host = torch.empty(n, dtype=torch.long, device=ids.device)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        same = aligned[rows].unsqueeze(1) == aligned.unsqueeze(0)  # [c, N, W]
        is_prefix = (same | ~inside[rows].unsqueeze(1)).all(-1)  # [c, N]
        host[rows] = torch.where(is_prefix, rank.unsqueeze(0), -1).argmax(1)
    return host


def _sliding_window(config: Any) -> int | None:
    """The model's sliding attention window if any layer uses one, else None."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and all(t == "full_attention" for t in layer_types):
        return None
    return int(window)


def frozen_reference(policy: CausalLMPolicy) -> CausalLMPolicy:
    """A frozen copy of ``policy`` for the KL leash (no gradients, eval mode, cached log_prob)."""
    ref = copy.deepcopy(policy)
    ref.reset_cache()
    ref.requires_grad_(False)
    ref.eval()
    ref.incremental_log_prob = True
    return ref


# ----------------------------------------------------------------------------- the KV cache


@dataclass
class _Extended:
    hidden: Tensor
    state: _KVState


def _cache_kwarg(base: nn.Module) -> str:
    """The forward argument that takes a cache: ``cache`` (transformers >= 5.2x) or the old name."""
    return _cache_kwarg_of(type(base))


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _continuing(state: _KVState | None, ids: Tensor, mask: Tensor) -> Tensor:
    """``[N]`` bool: rows whose observation is the cached one plus exactly one new token."""
    n = ids.shape[0]
    if state is None or state.ids.shape != ids.shape or state.ids.device != ids.device:
        return torch.zeros(n, dtype=torch.bool, device=ids.device)
    masked = ids * mask
    same_prefix = (masked[:, :-1] == state.ids[:, 1:]).all(-1)
    return same_prefix & (mask.sum(-1) == state.lengths + 1)


def _extend(base: nn.Module, state: _KVState | None, ids: Tensor, mask: Tensor) -> _Extended:
    """Bring the cache up to ``ids[:, :-1]`` for every row, then run the last token of each."""
    from transformers import DynamicCache

    cont = _continuing(state, ids, mask)
    lengths = mask.sum(-1)
    if state is not None and bool(cont.all()):
        # The common step: the model appends one column to the cache in place. No row restarted,
        # so no leading all-padding column can appear and the cache stays <= the window.
        cache, cache_mask = state.cache, state.cache_mask
    elif state is not None and bool(cont.any()) and _fits_in_place(state, ~cont, mask):
        # Some rows restarted with prompts that fit the cache: overwrite just those rows.
        cache, cache_mask = _splice_in_place(base, state, ~cont, ids, mask)
    else:
        layers, cache_mask = _compact(*_rebuild(base, state, cont, ids, mask))
        cache = DynamicCache(ddp_cache_data=layers)
    step_mask = torch.cat([cache_mask, cache_mask.new_ones(len(ids), 1)], dim=1)
    out = base(
        input_ids=ids[:, -1:],
        attention_mask=step_mask,
        position_ids=(lengths - 1).unsqueeze(-1),
        use_cache=True,
        **{_cache_kwarg(base): cache},
    )
    new_state = _KVState(ids * mask, mask, lengths, _out_cache(out), step_mask)
    return _Extended(out.last_hidden_state[:, -1], new_state)


def _prefill(
    base: nn.Module, ids: Tensor, mask: Tensor, rows: Tensor
) -> tuple[int, list[tuple[Tensor, Tensor]], Tensor]:
    """Keys/values of ``rows``' tokens but the last, in one left-padded forward.

    Returns the longest prefix ``p``, per layer ``(keys, values)`` ``[k, heads, p, head_dim]``
    with padded columns zeroed, and their mask ``[k, p]``.
    """
    width = ids.shape[1]
    prefix = int(mask[rows].sum(-1).max()) - 1  # the last token is run by the step itself
    if prefix == 0:
        return 0, [], mask.new_zeros(int(rows.sum()), 0)
    p_ids, p_mask = ids[rows, width - 1 - prefix : -1], mask[rows, width - 1 - prefix : -1]
    out = base(input_ids=p_ids, attention_mask=p_mask, position_ids=_positions(p_mask),
               use_cache=True)  # fmt: skip
    keep = p_mask.bool()[:, None, :, None]
    layers = [(k.where(keep, 0.0), v.where(keep, 0.0)) for k, v in _layers(_out_cache(out))]
    return prefix, layers, p_mask


def _fits_in_place(state: _KVState, new: Tensor, mask: Tensor) -> bool:
    """Whether restarted rows can be written into the existing cache tensors."""
    keys = state.cache.layers[0].keys
    if keys.is_inference() and not torch.is_inference_mode_enabled():
        return False  # inference tensors can only be modified in inference mode
    return int(mask[new].sum(-1).max()) - 1 <= state.cache_mask.shape[1]


def _splice_in_place(
    base: nn.Module, state: _KVState, new: Tensor, ids: Tensor, mask: Tensor
) -> tuple[Any, Tensor]:
    """Overwrite the restarted rows of the cache with their prefilled prompts (no reallocation)."""
    prefix, prefilled, p_mask = _prefill(base, ids, mask, new)
    capacity = state.cache_mask.shape[1]
    cache_mask = state.cache_mask
    cache_mask[new] = 0
    rows = torch.nonzero(new).squeeze(-1)
    for layer_idx, layer in enumerate(state.cache.layers):
        layer.keys[rows] = 0.0
        layer.values[rows] = 0.0
        if prefix:
            layer.keys[rows, :, capacity - prefix :] = prefilled[layer_idx][0]
            layer.values[rows, :, capacity - prefix :] = prefilled[layer_idx][1]
    if prefix:
        cache_mask[rows, capacity - prefix :] = p_mask
    first = int(cache_mask.any(0).long().argmax()) if capacity else 0
    if first:  # the longest rows restarted: drop the columns nobody uses any more
        for layer in state.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        cache_mask = cache_mask[:, first:]
    return state.cache, cache_mask


def _rebuild(
    base: nn.Module, state: _KVState | None, cont: Tensor, ids: Tensor, mask: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """A new cache of every row's tokens but the last: kept rows copied, new rows prefilled.

    All new rows are prefilled in one left-padded forward; their padded key/value columns are
    zeroed and masked, so the batch cache stays right-aligned.
    """
    n = ids.shape[0]
    new = ~cont
    prefix, prefilled, p_mask = _prefill(base, ids, mask, new)
    kept = state.cache_mask.shape[1] if state is not None and bool(cont.any()) else 0
    capacity = max(kept, prefix)
    cache_mask = ids.new_zeros(n, capacity)
    if prefix:
        cache_mask[new, capacity - prefix :] = p_mask
    old_layers = state.layers if kept else []  # type: ignore[union-attr]
    template = old_layers or prefilled
    if not template:  # every row is a lone BOS: an empty cache
        return _empty_layers(base, ids, n), cache_mask
    if kept:
        cache_mask[cont, capacity - kept :] = state.cache_mask[cont]  # type: ignore[union-attr]
    layers = []
    for layer_idx, (k_ref, v_ref) in enumerate(template):
        keys = k_ref.new_zeros(n, k_ref.shape[1], capacity, k_ref.shape[3])
        values = v_ref.new_zeros(n, v_ref.shape[1], capacity, v_ref.shape[3])
        if kept:
            old_k, old_v = old_layers[layer_idx]
            keys[cont, :, capacity - kept :] = old_k[cont]
            values[cont, :, capacity - kept :] = old_v[cont]
        if prefix:
            keys[new, :, capacity - prefix :] = prefilled[layer_idx][0]
            values[new, :, capacity - prefix :] = prefilled[layer_idx][1]
        layers.append((keys, values))
    return layers, cache_mask


def _layers(cache: Any) -> list[tuple[Tensor, Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _empty_layers(base: nn.Module, ids: Tensor, n: int) -> list[tuple[Tensor, Tensor]]:
    """Zero-length keys/values per layer (shape taken from a one-token probe)."""
    probe = _layers(_out_cache(base(input_ids=ids[:1, -1:], use_cache=True)))
    return [
        (k.new_zeros(n, k.shape[1], 0, k.shape[3]), v.new_zeros(n, v.shape[1], 0, v.shape[3]))
        for k, v in probe
    ]


def _compact(
    layers: list[tuple[Tensor, Tensor]], cache_mask: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """Drop leading cache columns that are padding in every row (keeps the cache <= window)."""
    if cache_mask.shape[1] == 0:
        return layers, cache_mask
    first = int(cache_mask.any(0).long().argmax())
    if first == 0:
        return layers, cache_mask
    return [(k[:, :, first:], v[:, :, first:]) for k, v in layers], cache_mask[:, first:]
