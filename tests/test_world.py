"""Scene graph, edit programs and renderer of the procedural world."""

import math

import numpy as np
import pytest

from viva.world import (
    BACKGROUND_KINDS,
    COLORS,
    GLOBAL_STATES,
    SHAPES,
    Background,
    Clause,
    Motion,
    Pattern,
    Scene,
    Sprite,
    apply_program,
    program_from_list,
    program_to_list,
    render,
    render_float,
    render_reference,
)
from viva.world.program import region_of
from viva.world.render import shape_sdf


def make_scene(global_state="none", background="noise"):
    sprites = [
        Sprite(0, "circle", "red", 0.12, Motion("linear", (0.25, 0.3), (0.2, 0.05))),
        Sprite(1, "star", "blue", 0.15, Motion("orbit", (0.7, 0.65), radius=0.08, turns=0.5), z=1),
        Sprite(2, "square", "yellow", 0.09, Motion("bounce", (0.2, 0.75), (0.9, -0.3)),
               pattern=Pattern("stripes", (120, 100, 10), 3.0, 0.7)),
    ]
    return Scene(sprites, Background(background, "beige", "slate", seed=4), global_state, seed=9)


def test_scene_json_round_trip_preserves_rendering():
    scene = make_scene("snow")
    again = Scene.from_json(scene.to_json())
    assert again == scene
    np.testing.assert_array_equal(render(again), render(scene))


def test_program_round_trip_and_apply():
    scene = make_scene()
    new = Sprite(5, "cross", "green", 0.1, Motion("static", (0.5, 0.5)))
    program = [
        Clause("remove", target=0),
        Clause("recolor", target=1, color="pink"),
        Clause("resize", target=2, scale=1.6),
        Clause("add", sprite=new, region="center"),
        Clause("global", state="night"),
    ]
    assert program_from_list(program_to_list(program)) == program
    target = apply_program(scene, program)
    assert [s.id for s in target.sprites] == [1, 2, 5]
    assert target.sprite(1).color == "pink"
    assert math.isclose(target.sprite(2).radius, 0.09 * 1.6)
    assert target.global_state == "night"
    assert scene.sprite(1).color == "blue"  # the source is untouched
    with pytest.raises(ValueError):
        Clause("explode")


def test_render_is_deterministic_and_any_size():
    scene = make_scene("rain")
    a, b = render(scene, 64, 64, 8), render(scene, 64, 64, 8)
    assert a.dtype == np.uint8 and a.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(a, b)
    assert render(scene, 96, 128, 3).shape == (3, 96, 128, 3)
    assert render(scene, 17, 23, 1).shape == (1, 17, 23, 3)
    # Resolution-free: a 4x larger render, box-downsampled, matches the small one closely.
    big = render_float(make_scene(background="solid"), 256, 256, 1)[0]
    small = render_float(make_scene(background="solid"), 64, 64, 1)[0]
    down = big.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert np.abs(down - small).mean() < 0.01


def test_edges_are_antialiased():
    scene = Scene([Sprite(0, "circle", "red", 0.3, Motion("static", (0.5, 0.5)))], Background("solid", "gray"))
    frame, coverage = render_float(scene, 64, 64, 1, with_coverage=True)
    cov = coverage[0][0]
    partial = (cov > 0.05) & (cov < 0.95)
    assert partial.sum() > 20  # a ring of partially covered pixels
    # Area of a disc of radius 0.3 * 64 px.
    assert abs(cov.sum() - math.pi * (0.3 * 64) ** 2) / (math.pi * (0.3 * 64) ** 2) < 0.02


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_has_a_plausible_area(shape):
    u, v = np.meshgrid(np.linspace(-1.2, 1.2, 241), np.linspace(-1.2, 1.2, 241))
    inside = (shape_sdf(shape, u, v) < 0).mean() * 2.4**2
    expected = {"circle": math.pi, "square": 4 * 0.82**2, "diamond": 2.0, "triangle": 2 * 1.75 / 2,
                "cross": 2 * (2 * 0.68) - 0.68**2, "star": None}[shape]
    if expected is None:
        assert 0.8 < inside < 1.4  # a five-pointed star with inner radius 0.45
    else:
        assert abs(inside - expected) / expected < 0.03


def test_occlusion_reduces_coverage_of_lower_sprite():
    low = Sprite(0, "square", "red", 0.2, Motion("static", (0.45, 0.5)), z=0)
    high = Sprite(1, "circle", "blue", 0.2, Motion("static", (0.55, 0.5)), z=1)
    _, cov = render_float(Scene([low, high]), 64, 64, 1, with_coverage=True)
    alone = render_float(Scene([low]), 64, 64, 1, with_coverage=True)[1][0]
    assert cov[0].sum() < alone.sum() - 50
    assert np.all(cov[0] <= alone + 1e-6)


def test_motions_move_and_bounce_stays_inside():
    bounce = Motion("bounce", (0.5, 0.5), (3.3, -2.1))
    for t in np.linspace(0, 1, 50):
        x, y = bounce.position(float(t), margin=0.1)
        assert 0.1 - 1e-9 <= x <= 0.9 + 1e-9 and 0.1 - 1e-9 <= y <= 0.9 + 1e-9
    orbit = Motion("orbit", (0.5, 0.5), radius=0.2, turns=1.0)
    assert np.allclose(orbit.position(0.0), orbit.position(1.0))
    assert not np.allclose(orbit.position(0.0), orbit.position(0.5))
    frames = render(make_scene(background="solid"), 64, 64, 8)
    assert np.abs(frames[0].astype(int) - frames[-1]).sum() > 0


@pytest.mark.parametrize("state", GLOBAL_STATES)
def test_global_states_change_the_frames(state):
    base = render_float(make_scene("none"), 64, 64, 4)
    out = render_float(make_scene(state), 64, 64, 4)
    if state == "none":
        np.testing.assert_array_equal(out, base)
        return
    assert np.abs(out - base).mean() > 0.01
    if state == "grayscale":
        assert np.abs(out[..., 0] - out[..., 1]).max() < 1e-6
    if state == "night":
        assert out.mean() < base.mean() * 0.7


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_backgrounds_render(kind):
    frames = render(Scene([], Background(kind, "white", "charcoal", seed=1)), 32, 48, 1)
    std = frames.reshape(-1, 3).std(axis=0).mean()
    assert (std < 1e-6) if kind == "solid" else (std > 5)


def test_reference_image_shows_the_pattern():
    sprite = Sprite(3, "square", "green", 0.1, pattern=Pattern("checker", (10, 70, 15), 4.0))
    ref = render_reference(sprite, 64)
    assert ref.shape == (64, 64, 3)
    center = ref[20:44, 20:44].reshape(-1, 3).astype(int)
    green = np.abs(center - COLORS["green"]).sum(1) < 30
    dark = np.abs(center - (10, 70, 15)).sum(1) < 30
    assert green.mean() > 0.25 and dark.mean() > 0.25


def test_region_of_grid():
    assert region_of(0.1, 0.1) == "top left"
    assert region_of(0.5, 0.5) == "center"
    assert region_of(0.99, 0.7) == "bottom right"
