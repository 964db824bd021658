"""Stable-Baselines3 baselines on prefenv's envs (the only package importing SB3).

- :mod:`agents.sb3.bridge`: :class:`SB3VecEnvBridge`, the explicit translation from a Gymnasium
  1.x ``VectorEnv`` to SB3's ``VecEnv`` API (see its module docstring for the mapping).
- :mod:`agents.sb3.agent`: ``make_sb3_vec_env``, the ready configs ``SB3_ALGOS`` (``sb3-ppo``,
  ``sb3-sac``, ``sb3-a2c``), ``make_sb3_agent`` and :class:`SB3Agent`, the preference loop's
  adapter.
"""

try:
    import stable_baselines3  # noqa: F401 - one clear error for every submodule
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("agents.sb3 needs Stable-Baselines3: pip install 'prefenv[sb3]'") from e

from agents.sb3.agent import SB3_ALGOS, SB3Agent, SB3AlgoConfig, make_sb3_agent, make_sb3_vec_env
from agents.sb3.bridge import SB3VecEnvBridge, check_sb3_spaces

__all__ = [
    "SB3_ALGOS",
    "SB3Agent",
    "SB3AlgoConfig",
    "SB3VecEnvBridge",
    "check_sb3_spaces",
    "make_sb3_agent",
    "make_sb3_vec_env",
]
