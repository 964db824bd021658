"""A Hugging Face causal language model as a :class:`agents.policies.Policy` for the text envs.

Observations are those of :class:`envs.text.TextGenerationEnv`: a dict with ``"input_ids"`` and
``"attention_mask"`` ``[N, L]``, *left-padded* so each row's newest token is its last entry (the
trainer's buffer may hand them over as float tensors; they are cast back to integers); other
entries (``"prompt_length"``, which a learned text reward reads) are ignored. The action
is the next token; its distribution is the LM's softmax over the first ``action_dim`` logits (the
env's ``Discrete(len(tokenizer))``; extra embedding rows of the model are never sampled).

Two forward paths, equal up to float rounding (tested to 1e-5):

- **Cached** (:meth:`CausalLMPolicy.act`, and :meth:`~CausalLMPolicy.log_prob` of a
  :func:`frozen_reference`): a key/value cache (:mod:`agents.text.kv_cache`) follows a batch of
  episodes across steps. A row whose observation is the previous one plus one token costs one
  token of compute; a row that started a new episode (vector-env autoreset) has its prompt
  prefilled inside the step's forward, its tokens packed beside the other rows' newest ones
  (``prefill``; :mod:`agents.text.kv_cache`). So rollouts never recompute the whole prefix per
  token, and a step is one forward.
- **Full** (:meth:`~CausalLMPolicy.evaluate`, :meth:`~CausalLMPolicy.value` and ``log_prob``
  with gradients): one forward over the (trimmed) window, for PPO minibatches in any order.
  Rows that are prefixes of another row in the batch (earlier steps of the same episode) are
  read off that row's forward, so a minibatch costs one forward per episode it touches.

The value is a linear head on the LM's final hidden state at the last position (shared trunk).

Quick start (any local model directory; ``envs.text.load_lm`` checks the tokenizer/model pair)::

    model, tokenizer = envs.text.load_lm("runs/default_lm")
    env = prefenv.make_vec("prefenv/TextSentiment-v0", 8, tokenizer=tokenizer)
    policy = CausalLMPolicy(model, action_dim=env.single_action_space.n)
    agent = PPOKL(env, PPOKLConfig(kl_coef=0.1, gamma=1.0), policy=policy,
                  ref_policy=frozen_reference(policy))

The caches hold keys/values of the *current* parameters: ``evaluate``/``log_prob`` with gradients
(a training step) and ``load_state_dict`` drop them, so after a PPO update the next rollout step
re-prefills every row instead of reusing stale keys/values.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from agents.policies import Obs, categorical_log_prob_entropy
from agents.text.activations import fuse_activations
from agents.text.kv_cache import PREFILL_MODES, KVState, extend_cache, packable, positions
from agents.text.sampling import sample_categorical, sample_probs

__all__ = ["CausalLMPolicy", "frozen_reference", "sample_categorical"]


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
        prefill: where the prompts of rows that restarted (vector-env autoreset) run, one of
            ``"packed"``, ``"separate"``, ``"padded"`` (:mod:`agents.text.kv_cache`); None:
            packed where the model supports it, else padded on accelerators and separate on a
            CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        action_dim: int | None = None,
        incremental_log_prob: bool = False,
        prefill: str | None = None,
    ) -> None:
        super().__init__()
        from agents.text.lora import is_lora

        self.model = model
        fuse_activations(model)
        self._lora = is_lora(model)
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
        if prefill is not None and prefill not in PREFILL_MODES:
            raise ValueError(f"prefill={prefill!r}: choose one of {PREFILL_MODES} or None")
        self._packable = packable(self.base)
        if prefill == "packed" and not self._packable:
            raise ValueError(
                f"prefill='packed' needs a model whose attention goes through transformers' "
                f"AttentionInterface; {type(self.base).__name__} does not: use 'separate' or "
                "'padded'"
            )
        self.prefill = prefill
        self._act_state: KVState | None = None
        self._log_prob_state: KVState | None = None

    @property
    def lm_head(self) -> nn.Module:
        """The output embedding (hidden -> logits); not a separate submodule of the policy."""
        return self.model.get_output_embeddings()

    @property
    def base(self) -> nn.Module:
        """The transformer trunk (``model.base_model``): ids -> final hidden states. Under a
        ``peft`` LoRA model it is the wrapped model's trunk, whose projections carry the
        adapters (:mod:`agents.text.lora`)."""
        model = self.model.get_base_model() if self._lora else self.model
        return model.base_model

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
            position_ids=positions(mask[hosts]),
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
            state = extend_cache(self.base, getattr(self, attr), ids, mask, self._prefill(ids))
            setattr(self, attr, state.state)
        return state.hidden

    def _prefill(self, ids: Tensor) -> str:
        if self.prefill is not None:
            return self.prefill
        if self._packable:
            return "packed"
        return "separate" if ids.device.type == "cpu" else "padded"

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)[:, : self.action_dim].float()

    # ------------------------------------------------------------------ Policy protocol

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Next tokens ``[N]``, their log-probs ``[N]`` and values ``[N]`` (cached path)."""
        hidden = self.cached_hidden(obs, "act")
        probs = torch.softmax(self._logits(hidden), -1)
        actions = probs.argmax(-1) if deterministic else sample_probs(probs)
        log_probs = probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1).log()
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
