"""Detector and verifier of the mini world: exact renders, degraded renders (blur, noise, brightness),
every edit op, every global state, every background kind, patterned sprites, images and clips, another
resolution; and, on generated pairs, the acceptance checks (target passes, source fails)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from viva.world import (
    BACKGROUND_KINDS,
    GLOBAL_STATES,
    SHAPES,
    Background,
    Clause,
    Motion,
    Pattern,
    Scene,
    Sprite,
    apply_program,
    detect,
    program_to_list,
    render,
    verify,
)
from viva.world.render import render_background, render_reference


def degrade(frames: np.ndarray, seed: int = 0, gain: float = 0.9) -> np.ndarray:
    """Gaussian blur sigma 1 px, Gaussian noise sigma 8/255, brightness x gain, clip, uint8."""
    rng = np.random.default_rng(seed)
    x = frames.astype(np.float32) / 255.0
    x = ndimage.gaussian_filter(x, (0, 1.0, 1.0, 0))
    x = np.clip((x + rng.normal(0.0, 8 / 255, x.shape)) * gain, 0.0, 1.0)
    return (x * 255 + 0.5).astype(np.uint8)


def scene(state: str = "none", background: Background | None = None, extra: list[Sprite] | None = None) -> Scene:
    """Three well separated sprites (static, linear, orbit) on a background."""
    sprites = [
        Sprite(0, "circle", "red", 0.115, Motion("static", (0.25, 0.27))),
        Sprite(1, "square", "blue", 0.1, Motion("linear", (0.62, 0.22), (0.15, 0.05)), z=1),
        Sprite(2, "star", "yellow", 0.13, Motion("orbit", (0.35, 0.72), radius=0.05, turns=0.5), z=2),
    ]
    return Scene(
        sprites=sprites + (extra or []),
        background=background or Background("gradient", "gray", "white"),
        global_state=state,
        seed=3,
    )


def new_sprite(sid=7, shape="triangle", color="green", pos=(0.78, 0.72), pattern=None, radius=0.115) -> Sprite:
    return Sprite(sid, shape, color, radius, Motion("static", pos), pattern or Pattern(), z=5)


STRIPES = Pattern("stripes", (101, 14, 14), 3.0, 0.6, 0.2)


def check(source: Scene, program: list[Clause], size=(64, 64), frames=8, reference=None, degraded=True):
    """The target passes, the source fails, and (optionally) the degraded target passes."""
    target = apply_program(source, program)
    h, w = size
    tgt = render(target, h, w, frames)
    src = render(source, h, w, frames)
    r_t = verify(source, program, tgt, reference)
    r_s = verify(source, program, src, reference)
    assert r_t.passed, r_t.summary()
    assert not r_s.passed, r_s.summary()
    assert r_t.score > r_s.score
    if degraded:
        for gain in (0.9, 1.1):
            r_d = verify(source, program, degrade(tgt, 1, gain), reference)
            assert r_d.passed, (gain, r_d.summary())
    return r_t, r_s


# Detector ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_detect_exact_render(size):
    s = scene()
    h, w = size
    result = detect(render(s, h, w, 8))
    assert len(result.per_frame) == 8
    assert len(result.tracks) == 3
    for sprite in s.sprites:
        track = next(t for t in result.tracks if t.color == sprite.color)
        assert track.shape == sprite.shape
        assert len(track.detections) == 8
        for d in track.detections:
            x, y = sprite.position(d.frame / 7.0)
            assert abs(d.x - x) < 0.02 and abs(d.y - y) < 0.02
        assert abs(track.radius - sprite.radius) < 0.15 * sprite.radius


def test_detect_every_shape_and_color_degraded():
    colors = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    for i, shape in enumerate(SHAPES):
        sprites = [
            Sprite(0, shape, colors[i], 0.13, Motion("static", (0.3, 0.3))),
            Sprite(1, shape, colors[(i + 3) % 8], 0.13, Motion("static", (0.7, 0.7))),
        ]
        s = Scene(sprites=sprites, background=Background("solid", "beige"))
        result = detect(degrade(render(s, 64, 64, 4), seed=i))
        found = {(t.color, t.shape) for t in result.tracks if len(t.detections) == 4}
        assert found == {(sp.color, sp.shape) for sp in sprites}


@pytest.mark.parametrize("state", ["night", "snow", "rain", "posterize"])
def test_detect_under_global_states(state):
    s = scene(state)
    for frames in (render(s, 64, 64, 8), degrade(render(s, 64, 64, 8), 2)):
        result = detect(frames, state)
        colors = {t.color for t in result.tracks if len(t.detections) >= 6}
        assert colors == {"red", "blue", "yellow"}


def test_detect_grayscale_by_contrast():
    s = scene("grayscale", Background("solid", "white"))
    result = detect(render(s, 64, 64, 8), "grayscale", background=render_background(s.background, 64, 64))
    tracks = [t for t in result.tracks if len(t.detections) == 8]
    assert {t.color for t in tracks} == {"gray"}
    assert len(tracks) == 3
    red = next(t for t in tracks if abs(t.mean_center[0] - 0.25) < 0.03)
    assert abs(red.detections[0].luma - 0.345) < 0.05  # the red circle's luminance


def test_detect_image_and_patterned_sprite():
    s = scene(extra=[new_sprite(pattern=STRIPES, color="red")])
    result = detect(render(s, 64, 64, 1)[0])
    assert len(result.per_frame) == 1
    reds = [d for d in result.per_frame[0] if d.color == "red"]
    assert len(reds) == 2  # the solid circle and the striped triangle, each in one piece
    striped = max(reds, key=lambda d: d.x)
    assert striped.shape == "triangle"
    assert striped.mass < 0.9 * striped.silhouette_mass  # the darker paint lowers the colored mass


def test_detect_empty_frames():
    frames = np.full((3, 32, 40, 3), 128, dtype=np.uint8)
    result = detect(frames)
    assert result.detections == [] and result.tracks == []
    with pytest.raises(ValueError):
        detect(np.zeros((4, 4)))


# Verifier: ops ------------------------------------------------------------------------------------------


def test_add_with_region_and_graded_scores():
    source = scene()
    sprite = new_sprite()
    program = [Clause("add", sprite=sprite, region="bottom right")]
    r_t, r_s = check(source, program)
    assert [c.name for c in r_t.clauses] == ["add[green triangle @bottom right]", "keep"]
    assert r_s.scores["add[green triangle @bottom right]"] < 0.1
    # Right color, wrong shape: in between. Wrong region: fails.
    wrong_shape = apply_program(source, [Clause("add", sprite=new_sprite(shape="circle"))])
    r_shape = verify(source, program, render(wrong_shape, 64, 64, 8))
    assert r_s.scores[r_shape.clauses[0].name] < r_shape.clauses[0].score < r_t.clauses[0].score
    elsewhere = apply_program(source, [Clause("add", sprite=new_sprite(pos=(0.8, 0.25)))])
    r_where = verify(source, program, render(elsewhere, 64, 64, 8))
    assert not r_where.clauses[0].passed


def test_remove():
    r_t, r_s = check(scene(), [Clause("remove", target=1)])
    assert r_t.clauses[0].name == "remove[blue square]"
    assert r_s.clauses[0].score < 0.1


@pytest.mark.parametrize("new", [("triangle", "red"), ("circle", "green"), ("diamond", "purple")])
def test_replace_shape_color_or_both(new):
    shape, color = new
    old = scene().sprite(0)
    sprite = Sprite(9, shape, color, old.radius, old.motion, z=old.z)
    check(scene(), [Clause("replace", target=0, sprite=sprite)])


def test_recolor_and_keep_catches_collateral_damage():
    source = scene()
    program = [Clause("recolor", target=2, color="cyan")]
    check(source, program)
    # Recoloring the wrong sprite too: the clause passes, keep does not.
    both = apply_program(source, program + [Clause("recolor", target=0, color="green")])
    result = verify(source, program, render(both, 64, 64, 8))
    assert result.clauses[0].passed and not result.clause("keep").passed


@pytest.mark.parametrize("scale", [1.6, 0.6])
def test_resize_grow_and_shrink(scale):
    source = scene()
    r_t, r_s = check(source, [Clause("resize", target=0, scale=scale)])
    ratio = r_t.clauses[0].details["ratio"]
    assert abs(np.log(ratio) - np.log(scale)) < 0.15
    # Halfway there scores in between.
    half = apply_program(source, [Clause("resize", target=0, scale=float(np.sqrt(scale)) ** 0.8)])
    r_half = verify(source, [Clause("resize", target=0, scale=scale)], render(half, 64, 64, 8))
    assert r_s.clauses[0].score < r_half.clauses[0].score < r_t.clauses[0].score


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_background_every_kind(kind):
    source = scene(background=Background("solid", "gray"))
    new = Background(kind, "beige", "charcoal", seed=11)
    r_t, _ = check(source, [Clause("background", background=new)])
    assert r_t.clauses[0].name.startswith(f"background[{kind} beige")


def test_background_color_only_change():
    source = scene(background=Background("checker", "white", "slate"))
    check(source, [Clause("background", background=Background("checker", "olive", "slate"))])


@pytest.mark.parametrize("state", [s for s in GLOBAL_STATES if s != "none"])
def test_global_states(state):
    r_t, r_s = check(scene(), [Clause("global", state=state)])
    assert r_t.global_state == state and r_s.global_state == "none"


@pytest.mark.parametrize("state", ["night", "snow", "rain"])
def test_global_back_to_clear(state):
    check(scene(state), [Clause("global", state="none")])


def test_ref_add_pattern_beats_solid():
    source = scene()
    sprite = new_sprite(color="red", shape="diamond", pattern=STRIPES, radius=0.14)
    program = [Clause("ref_add", sprite=sprite)]
    reference = render_reference(sprite)
    r_t, _ = check(source, program, reference=reference)
    solid = apply_program(source, [Clause("add", sprite=new_sprite(color="red", shape="diamond", radius=0.14))])
    r_solid = verify(source, program, render(solid, 64, 64, 8), reference)
    assert r_solid.clauses[0].score < 0.5 < r_t.clauses[0].score


def test_ref_replace_same_color_and_shape():
    source = scene()
    old = source.sprite(2)
    sprite = Sprite(9, old.shape, old.color, old.radius, old.motion,
                    Pattern("checker", (108, 99, 9), 3.5, 0.3, 0.0), z=old.z)
    check(source, [Clause("ref_replace", target=2, sprite=sprite)], reference=render_reference(sprite))


def test_hybrid_program_and_dict_program():
    source = scene()
    program = [
        Clause("remove", target=1),
        Clause("recolor", target=0, color="purple"),
        Clause("global", state="snow"),
    ]
    r_t, r_s = check(source, program)
    assert len(r_t.clauses) == 4 and all(c.passed for c in r_t.clauses)
    assert r_s.scores["global[snow]"] < 0.5
    # The program may come as JSON-like dicts (as stored in shards).
    again = verify(source, program_to_list(program), render(apply_program(source, program), 64, 64, 8))
    assert again.scores == r_t.scores


def test_unexpected_sprite_fails_keep():
    source = scene()
    program = [Clause("remove", target=1)]
    extra = apply_program(source, program + [Clause("add", sprite=new_sprite(color="orange"))])
    result = verify(source, program, render(extra, 64, 64, 8))
    assert result.clauses[0].passed
    assert result.clause("keep").details["unexpected"] > 0.3
    assert not result.passed


def test_images_and_other_resolution():
    source = scene()
    program = [Clause("replace", target=1, sprite=Sprite(9, "cross", "green", 0.1, source.sprite(1).motion, z=1))]
    check(source, program, size=(64, 64), frames=1)
    check(source, program, size=(96, 128), frames=8)
    # An image may be given as [H,W,3].
    image = render(apply_program(source, program), 64, 64, 1)[0]
    assert verify(source, program, image).passed


def test_grayscale_hybrid():
    source = scene(background=Background("solid", "charcoal"))
    program = [Clause("global", state="grayscale"), Clause("remove", target=0)]
    check(source, program)


def test_score_is_graded_between_source_and_target():
    source = scene()
    program = [Clause("global", state="night"), Clause("remove", target=2)]
    target = apply_program(source, program)
    half = apply_program(source, program[:1])  # night, but the star is still there
    scores = [verify(source, program, render(s, 64, 64, 8)).score for s in (source, half, target)]
    assert scores[0] < scores[1] < scores[2]


# Generated pairs ---------------------------------------------------------------------------------------


def test_generated_pairs_per_category():
    generate = pytest.importorskip("viva.data.generate")
    from viva.data.pair import ALL_CATEGORIES

    n = 30
    for category in ALL_CATEGORIES:
        stats = {"target": 0, "source": 0, "degraded": 0}
        for i in range(n):
            pair = generate.make_pair(1234, i, category)
            args = (pair.source_scene, pair.program)
            stats["target"] += verify(*args, pair.target, pair.reference).passed
            stats["source"] += verify(*args, pair.source, pair.reference).passed
            stats["degraded"] += verify(*args, degrade(pair.target, i, (0.9, 1.1)[i % 2]), pair.reference).passed
        assert stats["target"] >= n - 1, (category, stats)
        assert stats["source"] <= 1, (category, stats)
        assert stats["degraded"] >= n - 2, (category, stats)
