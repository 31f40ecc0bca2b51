"""Two-tone scenes: the mini world's scenes (its second form, issue 19), measured against the first world's
scenes by `python -m bench.mini_world_levers`.

Why this form. The first world's scenes (`synthetic.synthetic_scene`) hold 3-7 primitives with random positions,
rotations, two colours and four fine textures, while a caption names only colour and kind: a single
object token must absorb a whole layout, and a 64x48 image cannot hold the textures. Here every
attribute that varies is one the caption names, and the viewpoint is visible on the object itself:
- 1 or 2 objects (ball, box or can), large, at fixed places (the centre, or left and right);
- each object is split by a vertical plane into two named, saturated colours, the first on its left
  (-x) half: from the left cameras a "red/blue box" is mostly red, from the right mostly blue;
- no fine textures; one plain table and one background for every scene.
The caption lists the objects left to right: "red/blue box, green/yellow ball".
"""

from __future__ import annotations

import math

import numpy as np

from viewneti_core.data.synthetic import TABLE_RADIUS, Primitive, Scene

COLORS = {  # linear RGB; hues far enough apart to stay distinct after the 4x VAE at 64x48
    "red": (0.80, 0.06, 0.05), "orange": (0.85, 0.32, 0.03), "yellow": (0.80, 0.70, 0.05),
    "green": (0.08, 0.60, 0.10), "cyan": (0.05, 0.60, 0.70), "blue": (0.06, 0.15, 0.85),
    "purple": (0.45, 0.08, 0.75), "pink": (0.85, 0.30, 0.55),
}
KINDS = {"ball": "sphere", "box": "box", "can": "cylinder"}
TABLE_COLOR = np.array([[0.42, 0.40, 0.36], [0.42, 0.40, 0.36]])
BACKGROUND = np.array([[0.04, 0.05, 0.07], [0.15, 0.17, 0.22]])
SLOTS = {1: (0.0,), 2: (-75.0, 75.0)}  # x of each object, mm
ONE_OBJECT_SHARE = 0.4
# Every drawn size times 1.4: objects then cover about a quarter of the image instead of an eighth, so
# each tone keeps more latent pixels at 64x48 (docs/mini_world.md, "Objects larger in the frame").
OBJECT_SCALE = 1.4


def two_tone_scene(seed: int, scan: int) -> tuple[Scene, str]:
    """The scene of (seed, scan) and the words that name all of it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, scan, 2]))
    count = 1 if rng.uniform() < ONE_OBJECT_SHARE else 2
    names = tuple(COLORS)
    objects, words = [], []
    for x in SLOTS[count]:
        kind = str(rng.choice(tuple(KINDS)))
        left, right = (names[i] for i in rng.choice(len(names), 2, replace=False))
        angle = float(rng.uniform(-0.2, 0.2))  # a slight turn, so box faces catch the light differently
        base = np.array([x + rng.uniform(-6, 6), rng.uniform(-8, 8), 0.0])
        scale = 1.0 if count == 1 else 0.8
        if kind == "ball":
            size = np.array([rng.uniform(38, 48) * scale])
        elif kind == "box":
            size = np.array([rng.uniform(30, 38), rng.uniform(28, 36), rng.uniform(70, 110)]) * scale
        else:
            size = np.array([rng.uniform(30, 38), rng.uniform(70, 115)]) * scale
        size = size * OBJECT_SCALE
        split = np.array([math.cos(angle), math.sin(angle), 0.0])  # the second colour on the +x side
        objects.append(Primitive(KINDS[kind], base, size, angle, np.array([COLORS[left], COLORS[right]]),
                                 "split", 10.0, split))
        words.append(f"{left}/{right} {kind}")
    table = Primitive("table", np.zeros(3), np.array([TABLE_RADIUS]), 0.0, TABLE_COLOR, "plain", 40.0,
                      np.array([1.0, 0.0, 0.0]))
    return Scene(table, tuple(objects), BACKGROUND), ", ".join(words)
