"""Paired editing data: primitive edit operations, instruction grammar, pair generation, shards, datasets.

Submodules are imported on use (`viva.data.shards`, `viva.data.dataset`, ...), so importing this package
stays cheap (no torch) for generator worker processes and the CLI.
"""

# Version of the pair generator's output. Bump it whenever the same (seed, index, config) would produce
# different pairs or different shard bytes; it is recorded in every dataset's manifest.json.
GENERATOR_VERSION = 1

# Public API of the pair generator, imported lazily (PEP 562) so `import viva.data` stays cheap.
_EXPORTS: dict[str, str] = {
    # pair.py: the example and its categories
    "EditPair": "pair",
    "CATEGORY_OPS": "pair",
    "PRIMITIVE_CATEGORIES": "pair",
    "HYBRID": "pair",
    "ALL_CATEGORIES": "pair",
    # generate.py: configuration, pairs and masks
    "DataConfig": "generate",
    "SPLITS": "generate",
    "make_pair": "generate",
    "choose_category": "generate",
    "edit_mask": "generate",
    "touched_ids": "generate",
    # grammar.py: phrasings and the held-out rule
    "DEFAULT_HELDOUT_PHRASINGS": "grammar",
    "Phraser": "grammar",
    "all_phrasing_ids": "grammar",
    # refer.py: referring expressions and their resolver
    "Ref": "refer",
    "resolve": "refer",
    "resolve_expression": "refer",
    "parse_expression": "refer",
    "unambiguous_refs": "refer",
    # sampling.py / ops.py: scenes and clauses
    "Geometry": "sampling",
    "sample_scene": "sampling",
    "sprite_track": "sampling",
    "layout_ok": "sampling",
    "Draft": "ops",
    "OpContext": "ops",
    "sample_clause": "ops",
    "hybrid_categories": "ops",
}

__all__ = ["GENERATOR_VERSION", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'viva.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
