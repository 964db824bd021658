"""Text generation tasks: a token-level generation MDP and an offline default language model.

- :class:`TextGenerationEnv` (``envs.text.token_env``): the Gymnasium env (token ids + mask in,
  next token out, scored at the end); :class:`TextTask` adds the registered tasks'
  true scores (``prefenv/TextSentiment-v0``, ``prefenv/TextKeyword-v0``, ``prefenv/TextConcise-v0``).
- ``envs.text.default_model``: the project's tokenizer and tiny GPT-2 (:func:`build_default_lm`),
  and :func:`load_lm` for any local Hugging Face causal LM directory.
- ``envs.text.corpus``: the seeded template corpus both are trained on.

``transformers`` is imported only when a tokenizer or model is built or loaded, and ``torch``
only for models: making and stepping a text env needs neither torch nor a model.

Quick start (offline)::

    import gymnasium as gym
    import envs  # registers the ids
    from envs.text import build_default_lm, load_lm

    build_default_lm("runs/default_lm")          # ~30-60 s on CPU, once
    model, tokenizer = load_lm("runs/default_lm")  # or any local HF causal LM directory
    env = gym.make("prefenv/TextSentiment-v0", tokenizer=tokenizer)
    obs, info = env.reset(seed=0)                # info["prompt"]: the sampled prompt

The agent side is ``agents.lm_policy.CausalLMPolicy`` (KV-cached rollouts, PPO-KL ready).
"""

from envs.text.default_model import (
    VocabMismatchError,
    build_default_lm,
    check_vocab,
    default_tokenizer,
    load_lm,
    tiny_gpt2_config,
)
from envs.text.scorers import Conciseness, KeywordInclusion, Scorer, VaderSentiment
from envs.text.tasks import TASKS, TextTask
from envs.text.token_env import TextGenerationEnv, load_prompts

__all__ = [
    "TASKS",
    "Conciseness",
    "KeywordInclusion",
    "Scorer",
    "TextGenerationEnv",
    "TextTask",
    "VaderSentiment",
    "VocabMismatchError",
    "build_default_lm",
    "check_vocab",
    "default_tokenizer",
    "load_lm",
    "load_prompts",
    "tiny_gpt2_config",
]
