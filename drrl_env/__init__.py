"""drrl: a Gymnasium environment for choosing the rank of transformer attention (DR-RL).

Importing the package registers ``DRRL-v0``::

    import gymnasium as gym
    import drrl_env  # noqa: F401

    env = gym.make("DRRL-v0")                      # all-MiniLM-L6-v2 on Python's pydoc text
    env = gym.make("DRRL-v0", source="synthetic")  # seeded synthetic q/k/v
"""

from drrl_env.config import EnvConfig, make_config
from drrl_env.env import RankSelectionEnv
from drrl_env.registration import register_envs

__all__ = ["EnvConfig", "RankSelectionEnv", "make_config"]
__version__ = "0.1.0"

register_envs()
