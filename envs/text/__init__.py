"""Text generation tasks: a token-level generation MDP and an offline default language model.

- :class:`TextGenerationEnv` (``envs.text.token_env``): the Gymnasium env (token ids + mask in,
  next token out, scored at the end); :class:`TextTask` adds the registered tasks'
  true scores (``prefenv/TextSentiment-v0``, ``prefenv/TextKeyword-v0``, ``prefenv/TextConcise-v0``).
- :class:`DialogueEnv` (``envs.text.dialogue``, ``prefenv/TextDialogue-v0``): a multi-turn
  dialogue with a scripted user who hides a goal (``envs.text.dialogue_user``); the observation's
  ``role`` marks the policy's tokens; :class:`DialogueTextEnv` is its turn-level text view.
- ``envs.text.default_model``: the project's tokenizer and tiny GPT-2 (:func:`build_default_lm`),
  and :func:`load_lm` for any local Hugging Face causal LM directory.
- ``envs.text.corpus``: the seeded template corpus both are trained on.
- ``envs.text.feedback``: simulated text annotators (:func:`make_text_teacher`: B-Pref noise plus
  verbosity, position and annotator-population biases) labelling ``(prompt, completion)`` pairs.
- ``envs.text.reward_model`` / ``envs.text.reward_ensemble``: :class:`TextRewardModel` (a
  scalar-head transformer over ``(prompt, completion)``) and :class:`TextRewardEnsemble`. They
  train with the one Bradley-Terry trainer, ``prefenv.reward_training.train_reward_model``
  (:func:`text_reward_config` gives text defaults), and reach an env as the learned-reward
  wrapper's predictor (``envs.text.reward_predictor``: finished episodes scored in one batch per
  vector step, whitened). Imported lazily, as they need torch.

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

The agent side is ``agents.text.lm_policy.CausalLMPolicy`` (KV-cached rollouts, PPO-KL ready).
"""

from envs.text.default_model import (
    VocabMismatchError,
    build_default_lm,
    check_vocab,
    default_tokenizer,
    load_lm,
    tiny_gpt2_config,
)
from envs.text.dialogue import DialogueEnv, DialogueTextEnv
from envs.text.feedback import (
    Annotator,
    TextTeacher,
    TextTeacherConfig,
    make_text_teacher,
    text_pair,
    text_pairs,
    text_segment,
)
from envs.text.scorers import Conciseness, KeywordInclusion, Scorer, VaderSentiment
from envs.text.tasks import TASKS, TextTask
from envs.text.token_env import TextGenerationEnv, load_prompts

_LAZY = {
    "TextRewardEnsemble": "envs.text.reward_ensemble",
    "TextRewardModel": "envs.text.reward_model",
    "TextRewardModelConfig": "envs.text.reward_config",
    "TextRewardPredictor": "envs.text.reward_predictor",
    "Whitening": "envs.text.reward_predictor",
    "load_text_reward_model": "envs.text.reward_ensemble",
    "text_reward_config": "envs.text.reward_config",
}


def __getattr__(name: str) -> object:
    """Import the torch-backed reward-model names on first use (``import envs.text`` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TASKS",
    "Annotator",
    "DialogueEnv",
    "DialogueTextEnv",
    "TextRewardEnsemble",
    "TextRewardModel",
    "TextRewardModelConfig",
    "TextRewardPredictor",
    "Whitening",
    "text_reward_config",
    "TextTeacher",
    "TextTeacherConfig",
    "load_text_reward_model",
    "make_text_teacher",
    "text_pair",
    "text_pairs",
    "text_segment",
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
