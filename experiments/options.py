"""Option text from the command line (``--env-kwargs key=value ...``) as each environment's config holds
it: shared by the ``drrl`` subcommands and the benchmarks."""

from __future__ import annotations

from typing import Any


def parse_env_kwargs(pairs: list[str], config_class: type | None = None) -> dict[str, Any]:
    """``["beta=0.5", "safety=false"]`` -> ``{"beta": 0.5, "safety": False}``: each value converted to
    its field's type in ``config_class`` (default DRRL-v0's ``EnvConfig``) by
    ``drrl_env.config.coerce_option`` (the same conversion as ``gym.make``'s).  ``max_episode_steps``
    passes through to ``gym.make``."""
    from drrl_env.config import coerce_option

    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env-kwargs entry {pair!r} is not of the form key=value")
        if key == "max_episode_steps":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"--env-kwargs {pair!r}: max_episode_steps must be a positive integer")
            kwargs[key] = int(value)
        else:
            quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
            unquoted = value[1:-1] if quoted else value  # source='synthetic' as Python writes it
            kwargs[key] = coerce_option(key, unquoted, config_class)
    return kwargs


def parse_kv_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``--env-kwargs`` for DRRL-KV-v0: :func:`parse_env_kwargs` with its ``KVConfig``."""
    from drrl_env.kv.config import KVConfig

    return parse_env_kwargs(pairs, KVConfig)
