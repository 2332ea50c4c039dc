"""Rewards for Edit-GRPO and evaluation: one protocol (`reward(batch) -> RewardOutput`), weighted sums,
the mini world's verifiable rewards, CLIP-family rewards for the full scale, and the VLM judge client.

Exports are imported on first use (PEP 562), so verifier worker processes and the CLI stay cheap.
"""

_EXPORTS: dict[str, str] = {
    "RewardBatch": "base",
    "RewardOutput": "base",
    "Reward": "base",
    "WeightedSum": "base",
    "InstructionFollowing": "world",
    "Preservation": "world",
    "Quality": "world",
    "EditRegion": "world",
    "edit_region": "world",
    "scene_caption": "world",
    "ClipScorer": "clip",
    "ClipInstructionReward": "clip",
    "ClipPreservation": "clip",
    "PickScore": "clip",
    "JudgeConfig": "judge",
    "JudgeClient": "judge",
    "load_manifest": "judge",
    "judge_manifest": "judge",
    "JudgeError": "judge",
    "parse_scores": "judge",
    "summarize": "judge",
    "world_captions": "world",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'viva.rewards' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
