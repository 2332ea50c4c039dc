"""The instruction grammar: templates, paraphrases, synonyms and held-out phrasings.

Every choice the grammar makes is a *phrasing* with an id: a template has an id with a dot
("remove.0", "join.2"), a synonym is its own text ("erase", "crimson", "on the left"). A `Phraser` makes
the choices and records the ids it used, which is how the data keeps some phrasings out of training:

- split "train": held-out ids are never chosen;
- split "heldout": held-out ids are preferred where a choice has one, and an instruction that ended up
  without any is phrased again (the last tries force them), so every instruction uses at least one;
- split "any": everything is allowed.

Texts are built lowercase-first and capitalised once at the end, so a clause's text can be joined into a
hybrid instruction ("Remove the red circle and make it snow.").
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..world.program import REGIONS

# Lexicon ---------------------------------------------------------------------------------------------
# Synonym tuples: the first word is the canonical one (chosen twice as often as each other word).

COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson"),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium-sized",),
    "large": ("large", "big"),
}
SUPERLATIVE_WORDS: dict[str, tuple[str, ...]] = {
    "biggest": ("biggest", "largest"),
    "smallest": ("smallest", "tiniest"),
}
# Position phrases: "the leftmost one" (before the noun) or "the one on the left" (after it).
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("leftmost", "on the left", "furthest to the left"),
    "right": ("rightmost", "on the right", "furthest to the right"),
    "top": ("topmost", "at the top", "highest"),
    "bottom": ("bottommost", "at the bottom", "lowest"),
}
POSITION_BEFORE_NOUN = frozenset({"leftmost", "rightmost", "topmost", "bottommost", "highest", "lowest"})
NOUNS: tuple[str, ...] = ("one", "object", "shape", "thing")
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "gray": ("gray", "grey"),
    "white": ("white",),
    "charcoal": ("charcoal",),
    "beige": ("beige",),
    "slate": ("slate",),
    "olive": ("olive",),
}
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "near the top", "at the top center"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "on the left side", "at the left edge"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "on the right side", "at the right edge"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom center"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
assert set(REGION_WORDS) == set(REGIONS)
MEDIUM_WORDS = {"video": ("video", "clip", "scene"), "image": ("image", "picture")}

VERBS_REMOVE = ("remove", "delete", "take out", "erase", "get rid of")
VERBS_ADD = ("add", "put", "place", "insert", "include")
VERBS_ADD_ANYWHERE = ("add", "insert", "include")  # "put"/"place" want a place after them
# Replace verbs carry their preposition: "replace X with Y", "swap X for Y", "turn X into Y".
VERBS_REPLACE: dict[str, str] = {"replace": "with", "turn": "into", "change": "into", "exchange": "for", "swap": "for"}
VERBS_COLOR = ("make", "turn", "paint", "color", "dye")
VERBS_GROW = ("enlarge", "scale up", "grow", "increase the size of", "magnify")
VERBS_SHRINK = ("shrink", "scale down", "reduce the size of", "decrease the size of", "downsize")
COMPARATIVE_GROW = ("bigger", "larger", "twice as big", "much bigger")
COMPARATIVE_SHRINK = ("smaller", "half the size", "much smaller", "tinier")
VERBS_BACKGROUND = ("change", "switch", "set")
VERBS_WEATHER_REMOVE = ("remove", "get rid of")
CHECKER_WORDS = ("checkered", "checkerboard", "checked")
STRIPE_WORDS = ("striped", "stripy")
NOISE_WORDS = ("mottled", "cloudy", "blotchy")
SOLID_WORDS = ("plain", "solid", "uniform")
GRAYSCALE_WORDS = ("grayscale", "greyscale", "monochrome")
REF_NOUNS = ("object", "shape", "thing")
REF_PREPS = ("from", "in", "shown in")
REF_IMAGE_WORDS = ("reference image", "reference picture", "reference")


@dataclass(frozen=True)
class Template:
    """One paraphrase. `text` starts lowercase and has slots `{name}`; it ends without a period (one is
    added) or with "?". `hybrid`: usable as a clause of a hybrid instruction (a bare imperative)."""

    id: str
    text: str
    hybrid: bool = True


def _templates(op: str, *items: tuple[str, bool]) -> tuple[Template, ...]:
    return tuple(Template(f"{op}.{i}", text, hybrid) for i, (text, hybrid) in enumerate(items))


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "remove": _templates(
        "remove",
        ("{v_remove} {ref}", True),
        ("{v_remove} {ref} from the {medium}", True),
        ("please {v_remove} {ref}", False),
        ("make {ref} disappear", True),
        ("can you {v_remove} {ref}?", False),
        ("the {medium} should no longer contain {ref}", False),
    ),
    "add": _templates(
        "add",
        ("{v_add} {obj}{where}", True),
        ("add {obj} to the {medium}{where}", True),
        ("please {v_add} {obj}{where}", False),
        ("there should also be {obj}{where}", False),
        ("can you {v_add} {obj}{where}?", False),
        ("make {obj} appear{where}", True),
    ),
    "replace": _templates(
        "replace",
        ("{v_replace} {ref} {prep} {obj}", True),
        ("please {v_replace} {ref} {prep} {obj}", False),
        ("put {obj} in place of {ref}", True),
        ("{ref} should become {obj}", False),
        ("can you {v_replace} {ref} {prep} {obj}?", False),
        ("instead of {ref}, show {obj}", False),
    ),
    "color": _templates(
        "color",
        ("{v_color} {ref} {color}", True),
        ("change the color of {ref} to {color}", True),
        ("please {v_color} {ref} {color}", False),
        ("{ref} should be {color}", False),
        ("can you {v_color} {ref} {color}?", False),
        ("give {ref} {a_color} color", True),
    ),
    "size": _templates(
        "size",
        ("make {ref} {cmp}", True),
        ("{v_size} {ref}", True),
        ("please make {ref} {cmp}", False),
        ("{ref} should be {cmp}", False),
        ("can you make {ref} {cmp}?", False),
        ("resize {ref} so that it is {cmp}", True),
    ),
    "background": _templates(
        "background",
        ("{v_background} the background to {bg}", True),
        ("replace the background with {bg}", True),
        ("use {bg}", True),
        ("make the background {bgadj}", True),
        ("can you change the background to {bg}?", False),
        ("give the {medium} {bg}", True),
    ),
    "night": _templates(
        "night",
        ("make it night", True),
        ("turn day into night", True),
        ("make the {medium} look like it is nighttime", True),
        ("change the time of day to night", True),
        ("make it look like the middle of the night", True),
        ("can you make it night?", False),
    ),
    "snow": _templates(
        "snow",
        ("make it snow", True),
        ("add falling snow", True),
        ("add snow to the {medium}", True),
        ("make it a snowy day", True),
        ("let snowflakes drift down over the {medium}", True),
        ("can you make it snow?", False),
    ),
    "rain": _templates(
        "rain",
        ("make it rain", True),
        ("add falling rain", True),
        ("add rain to the {medium}", True),
        ("make it a rainy day", True),
        ("let raindrops pour down over the {medium}", True),
        ("can you make it rain?", False),
    ),
    "day": _templates(
        "day",
        ("make it daytime", True),
        ("turn night into day", True),
        ("make it day", True),
        ("change the time of day to daytime", True),
        ("bring back the daylight", True),
        ("can you make it daytime?", False),
    ),
    "unsnow": _templates(
        "unsnow",
        ("{v_unweather} the snow", True),
        ("stop the snow", True),
        ("make it stop snowing", True),
        ("clear away the snow", True),
        ("let the snowfall come to an end", True),
        ("can you {v_unweather} the snow?", False),
    ),
    "unrain": _templates(
        "unrain",
        ("{v_unweather} the rain", True),
        ("stop the rain", True),
        ("make it stop raining", True),
        ("clear away the rain", True),
        ("let the rain shower come to an end", True),
        ("can you {v_unweather} the rain?", False),
    ),
    "grayscale": _templates(
        "grayscale",
        ("make it black and white", True),
        ("convert the {medium} to {gray}", True),
        ("make the {medium} {gray}", True),
        ("remove all the color", True),
        ("drain the color out of the {medium}", True),
        ("can you make it black and white?", False),
    ),
    "posterize": _templates(
        "posterize",
        ("posterize the {medium}", True),
        ("apply a posterize effect", True),
        ("give the {medium} a posterized look", True),
        ("reduce the {medium} to a few flat brightness levels", True),
        ("make it look like a printed poster", True),
        ("can you posterize the {medium}?", False),
    ),
    "ref_add": _templates(
        "ref_add",
        ("{v_add} {refobj}{where}", True),
        ("please {v_add} {refobj}{where}", False),
        ("add {refobj} to the {medium}{where}", True),
        ("can you {v_add} {refobj}{where}?", False),
        ("bring {refobj} into the {medium}{where}", True),
    ),
    "ref_replace": _templates(
        "ref_replace",
        ("{v_replace} {ref} {prep} {refobj}", True),
        ("please {v_replace} {ref} {prep} {refobj}", False),
        ("put {refobj} in place of {ref}", True),
        ("can you {v_replace} {ref} {prep} {refobj}?", False),
        ("make {ref} look like {refobj}", True),
    ),
}

# Hybrid joiners, for 2 and for 3 clauses (same ids).
JOINERS: dict[int, tuple[Template, ...]] = {
    2: _templates("join", ("{0} and {1}", True), ("{0}, then {1}", True), ("first {0}, then {1}", True), ("{0}, and also {1}", True)),
    3: _templates(
        "join",
        ("{0}, {1}, and {2}", True),
        ("{0}, {1}, then {2}", True),
        ("first {0}, then {1}, and finally {2}", True),
        ("{0}, {1}, and also {2}", True),
    ),
}

# Held out of training by default: rarer synonyms and one whole template per family.
DEFAULT_HELDOUT_PHRASINGS: tuple[str, ...] = (
    # synonyms
    "erase",
    "get rid of",
    "swap",
    "include",
    "dye",
    "crimson",
    "violet",
    "rhombus",
    "magnify",
    "downsize",
    "grey",
    "checked",
    "monochrome",
    "furthest to the left",
    "tiniest",
    # whole templates
    "remove.5",
    "add.5",
    "replace.5",
    "color.5",
    "size.5",
    "background.5",
    "night.4",
    "snow.4",
    "rain.4",
    "day.4",
    "unsnow.4",
    "unrain.4",
    "grayscale.4",
    "posterize.4",
    "ref_add.4",
    "ref_replace.4",
    "join.3",
)


def all_phrasing_ids() -> frozenset[str]:
    """Every id the grammar can record (templates, joiners, synonyms)."""
    ids: set[str] = set()
    for family in TEMPLATES.values():
        ids.update(t.id for t in family)
    for family in JOINERS.values():
        ids.update(t.id for t in family)
    for table in (COLOR_WORDS, SHAPE_WORDS, SIZE_WORDS, SUPERLATIVE_WORDS, POSITION_WORDS, BACKGROUND_WORDS,
                  REGION_WORDS, MEDIUM_WORDS):
        for words in table.values():
            ids.update(words)
    for words in (NOUNS, VERBS_REMOVE, VERBS_ADD, tuple(VERBS_REPLACE), VERBS_COLOR, VERBS_GROW, VERBS_SHRINK,
                  COMPARATIVE_GROW, COMPARATIVE_SHRINK, VERBS_BACKGROUND, VERBS_WEATHER_REMOVE, CHECKER_WORDS,
                  STRIPE_WORDS, NOISE_WORDS, SOLID_WORDS, GRAYSCALE_WORDS, REF_NOUNS, REF_PREPS, REF_IMAGE_WORDS):
        ids.update(words)
    return frozenset(ids)


# Choices -----------------------------------------------------------------------------------------------


class NoPhrasing(ValueError):
    """The held-out set leaves a choice with no allowed option (split "train")."""


class Phraser:
    """Makes the grammar's choices with `rng` under a split's rule and records the ids used."""

    def __init__(self, rng: np.random.Generator, heldout: frozenset[str], split: str, force: bool = False):
        self.rng = rng
        self.heldout = heldout
        self.split = split
        self.force = force
        self.used: list[str] = []

    @property
    def heldout_used(self) -> list[str]:
        return [i for i in self.used if i in self.heldout]

    def choose(self, ids: Sequence[str], canonical: bool = False) -> str:
        """One of `ids`. `canonical`: the first id is twice as likely as each other (synonym lists)."""
        idx = list(range(len(ids)))
        if self.split == "train":
            idx = [i for i in idx if ids[i] not in self.heldout]
            if not idx:
                raise NoPhrasing(f"every phrasing of {list(ids)} is held out; remove one from heldout_phrasings")
        elif self.split == "heldout":
            held = [i for i in idx if ids[i] in self.heldout]
            if held and ((self.force and not self.heldout_used) or self.rng.random() < 0.5):
                idx = held
        if len(idx) == 1:
            i = idx[0]
        elif canonical and idx[0] == 0:
            r = int(self.rng.integers(len(idx) + 1))
            i = idx[max(r - 1, 0)]
        else:
            i = idx[int(self.rng.integers(len(idx)))]
        self.used.append(ids[i])
        return ids[i]

    def word(self, words: Sequence[str]) -> str:
        return self.choose(words, canonical=True)

    def template(self, templates: Sequence[Template], hybrid: bool = False) -> Template:
        pool = [t for t in templates if t.hybrid] if hybrid else list(templates)
        chosen = self.choose([t.id for t in pool])
        return next(t for t in pool if t.id == chosen)


def fill(template: Template, slots: dict[str, Callable[[], str]]) -> str:
    """The template's text with each slot filled, in order of appearance (so only used slots choose)."""
    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(template.text):
        out.append(literal)
        if name is not None:
            out.append(slots[name]())
    return "".join(out)


def finish(text: str) -> str:
    """Capitalise the first letter and end with a period unless the text ends with '?'."""
    text = text.strip()
    if not text.endswith(("?", ".")):
        text += "."
    return text[0].upper() + text[1:]


# Descriptions ------------------------------------------------------------------------------------------


def color_word(ph: Phraser, color: str) -> str:
    return ph.word(COLOR_WORDS[color])


def shape_word(ph: Phraser, shape: str) -> str:
    return ph.word(SHAPE_WORDS[shape])


def article(word: str) -> str:
    """'a' or 'an' before `word` (by sound: 'a uniform', 'an orange')."""
    if word.startswith(("uni", "use", "eu")):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


def new_object(ph: Phraser, color: str, shape: str, size: str | None) -> str:
    """'a small green square', 'an orange star'."""
    words = ([ph.word(SIZE_WORDS[size])] if size else []) + [color_word(ph, color), shape_word(ph, shape)]
    return f"{article(words[0])} {' '.join(words)}"


def reference_object(ph: Phraser, size: str | None = None) -> str:
    """'the object from the reference image', 'a small version of the shape shown in the reference'."""
    core = f"the {ph.word(REF_NOUNS)} {ph.word(REF_PREPS)} the {ph.word(REF_IMAGE_WORDS)}"
    if size:
        word = ph.word(SIZE_WORDS[size])
        return f"{article(word)} {word} version of {core}"
    return core


def region_phrase(ph: Phraser, region: str | None) -> str:
    return "" if region is None else " " + ph.word(REGION_WORDS[region])


def background_phrases(ph: Phraser, kind: str, color: str, color2: str) -> tuple[Callable[[], str], Callable[[], str]]:
    """Lazy slots (noun phrase, adjective phrase) naming a background's colors and kind:
    'a beige and white checkered background' / 'beige and white checkered'."""

    def names() -> tuple[str, str]:
        return ph.word(BACKGROUND_WORDS[color]), ph.word(BACKGROUND_WORDS[color2])

    def adjective() -> str:
        if kind == "solid":
            c = ph.word(BACKGROUND_WORDS[color])
            return f"{ph.word(SOLID_WORDS)} {c}"
        c, c2 = names()
        if kind == "gradient":
            return f"a {c} to {c2} gradient"
        if kind == "checker":
            return f"{c} and {c2} {ph.word(CHECKER_WORDS)}"
        if kind == "stripes":
            return f"{c} and {c2} {ph.word(STRIPE_WORDS)}"
        return f"{ph.word(NOISE_WORDS)} {c} and {c2}"

    def noun() -> str:
        if kind == "gradient":
            c, c2 = names()
            return f"a gradient background from {c} to {c2}"
        adj = adjective()
        return f"{article(adj)} {adj} background"

    return noun, adjective


def medium(ph: Phraser, is_image: bool) -> str:
    return ph.word(MEDIUM_WORDS["image" if is_image else "video"])


def state_family(state_from: str, state_to: str) -> str:
    """The template family of a global clause: the new state, or 'day'/'unsnow'/'unrain' when clearing."""
    if state_to != "none":
        return state_to
    return {"night": "day", "snow": "unsnow", "rain": "unrain"}[state_from]


def join(ph: Phraser, clauses: list[str]) -> str:
    """Hybrid clauses joined into one instruction ('remove the red circle and make it snow')."""
    template = ph.template(JOINERS[len(clauses)])
    return template.text.format(*clauses)


# Clauses and instructions ------------------------------------------------------------------------------


def clause_text(ph: Phraser, draft, ref: Callable[[], str] | None, is_image: bool, hybrid: bool = False) -> str:
    """The words of one drafted clause (`viva.data.ops.Draft`), lowercase-first, without the final
    period. `ref` lazily phrases the clause's target; `hybrid` restricts to bare imperative templates."""
    category, clause, detail = draft.category, draft.clause, draft.detail
    slots: dict[str, Callable[[], str]] = {"medium": lambda: medium(ph, is_image)}
    if ref is not None:
        slots["ref"] = ref
    prep: list[str] = []

    def v_replace() -> str:
        verb = ph.word(tuple(VERBS_REPLACE))
        prep.append(VERBS_REPLACE[verb])
        return verb

    slots["v_replace"] = v_replace
    slots["prep"] = lambda: prep[-1]
    family = category
    if category == "remove":
        slots["v_remove"] = lambda: ph.word(VERBS_REMOVE)
    elif category in ("add", "ref_add"):
        sprite = clause.sprite
        slots["v_add"] = lambda: ph.word(VERBS_ADD if clause.region else VERBS_ADD_ANYWHERE)
        slots["where"] = lambda: region_phrase(ph, clause.region)
        slots["obj"] = lambda: new_object(ph, sprite.color, sprite.shape, detail.get("size"))
        slots["refobj"] = lambda: reference_object(ph, detail.get("size"))
    elif category == "replace":
        slots["obj"] = lambda: new_object(ph, clause.sprite.color, clause.sprite.shape, None)
    elif category == "ref_replace":
        slots["refobj"] = lambda: reference_object(ph)
    elif category == "color":
        slots["v_color"] = lambda: ph.word(VERBS_COLOR)
        slots["color"] = lambda: color_word(ph, clause.color)

        def a_color() -> str:
            word = color_word(ph, clause.color)
            return f"{article(word)} {word}"

        slots["a_color"] = a_color
    elif category == "size":
        grow = detail["direction"] == "bigger"
        slots["v_size"] = lambda: ph.word(VERBS_GROW if grow else VERBS_SHRINK)
        slots["cmp"] = lambda: ph.word(COMPARATIVE_GROW if grow else COMPARATIVE_SHRINK)
    elif category == "background":
        bg = clause.background
        slots["bg"], slots["bgadj"] = background_phrases(ph, bg.kind, bg.color, bg.color2)
        slots["v_background"] = lambda: ph.word(VERBS_BACKGROUND)
    elif category in ("weather", "style"):
        family = state_family(detail["from"], detail["to"])
        slots["v_unweather"] = lambda: ph.word(VERBS_WEATHER_REMOVE)
        slots["gray"] = lambda: ph.word(GRAYSCALE_WORDS)
    else:
        raise ValueError(f"no phrasing for category {category!r}")
    template = ph.template(TEMPLATES[family], hybrid=hybrid)
    return fill(template, slots)


def instruction_text(ph: Phraser, drafts: list, refs: list[Callable[[], str] | None], is_image: bool) -> str:
    """The whole instruction: one clause's sentence, or 2-3 hybrid clauses joined into one."""
    if len(drafts) == 1:
        return finish(clause_text(ph, drafts[0], refs[0], is_image))
    texts = [clause_text(ph, d, r, is_image, hybrid=True) for d, r in zip(drafts, refs)]
    return finish(join(ph, texts))
