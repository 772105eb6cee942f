"""The embedded visual question answering set: generated 2-D scenes and templated questions.

A scene holds 3-5 objects, each of a distinct colour (:data:`COLOURS`, so "the red object" names one
object), a shape (circle, square, triangle), a size (small, large) and a texture (solid, striped),
at random positions on a grey background; later objects are painted over earlier ones (occlusion).
Each scene gets one question of each family:

- ``existence``  "is there a green object?"                            yes / no
- ``counting``   "how many large objects are there?"                   0-5
- ``query``      "what shape is the red object?" / "what colour is the large circle?"
- ``compare``    "does the red object have the same size as the blue object?"   yes / no
- ``spatial``    "is the red object left of the blue object?"           yes / no

Answers are balanced within each family: a question's template is drawn first, then the answer
(yes / no evenly, a count evenly among those the scene allows), then the template's values that
give it, each value of a template equally likely a priori; so the words of a question do not
tell its answer, and a model that reads only the question stays near chance within a family. A scene and its questions are a pure function of ``(seed, split, index)``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["COLOURS", "SHAPES", "SIZES", "TEXTURES", "FAMILIES", "make_vqa_scene"]

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "purple": (150, 60, 200), "cyan": (40, 210, 220), "orange": (240, 140, 30), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped")
FAMILIES = ("existence", "counting", "query", "compare", "spatial")
_ATTRS = {"shape": SHAPES, "size": SIZES, "texture": TEXTURES}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _paint(image: np.ndarray, obj: dict, img_size: int) -> None:
    y, x = np.mgrid[0:img_size, 0:img_size] + 0.5
    cy, cx, r = obj["y"], obj["x"], obj["radius"]
    if obj["shape"] == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    elif obj["shape"] == "square":
        inside = (np.abs(y - cy) <= r * 0.85) & (np.abs(x - cx) <= r * 0.85)
    else:  # upward triangle inside the circle of radius r
        inside = (y <= cy + r * 0.7) & (y - (cy - r) >= 1.7 * np.abs(x - cx))
    colour = np.array(COLOURS[obj["colour"]], dtype=np.float32)
    if obj["texture"] == "striped":  # dark horizontal bands, 2 px of every 4
        pixels = np.where(((y.astype(int) // 2) % 2 == 0)[..., None], colour, colour * 0.3)
    else:
        pixels = np.broadcast_to(colour, (img_size, img_size, 3))
    image[inside] = pixels[inside]


def _draw_objects(rng: np.random.Generator, img_size: int) -> list[dict]:
    count = int(rng.integers(3, 6))
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    objects = []
    for c in colours:
        size = SIZES[int(rng.integers(2))]
        radius = img_size * (0.09 if size == "small" else 0.16)
        objects.append({"colour": list(COLOURS)[c], "shape": SHAPES[int(rng.integers(3))], "size": size,
                        "texture": TEXTURES[int(rng.integers(2))], "radius": radius,
                        "y": float(rng.uniform(radius, img_size - radius)),
                        "x": float(rng.uniform(radius, img_size - radius))})
    return objects


def _noun(attrs: dict) -> str:
    words = [attrs[k] for k in ("size", "texture", "colour") if k in attrs]
    return " ".join(words + [attrs.get("shape", "object")])


def _matches(obj: dict, attrs: dict) -> bool:
    return all(obj[k] == v for k, v in attrs.items())


def _choose(rng: np.random.Generator, options: list, answer_of, want):
    """An option whose answer is ``want`` (uniformly among those), else any option with its answer."""
    answers = [answer_of(o) for o in options]
    fitting = [i for i, a in enumerate(answers) if a == want] or list(range(len(options)))
    i = fitting[int(rng.integers(len(fitting)))]
    return options[i], answers[i]


def _existence(rng, objects):
    # every colour is equally likely asked, and present or absent evenly: the words give no hint
    present = {o["colour"] for o in objects}
    colour, found = _choose(rng, list(COLOURS), lambda c: c in present, bool(rng.integers(2)))
    return f"is there a {colour} object?", "yes" if found else "no"


def _counting(rng, objects):
    attr = list(_ATTRS)[int(rng.integers(3))]
    count = lambda v: sum(o[attr] == v for o in objects)  # noqa: E731
    reachable = sorted({count(v) for v in _ATTRS[attr]})
    value, n = _choose(rng, list(_ATTRS[attr]), count, reachable[int(rng.integers(len(reachable)))])
    noun = f"{value}s" if attr == "shape" else f"{value} objects"
    return f"how many {noun} are there?", str(n)


def _query(rng, objects):
    obj = objects[int(rng.integers(len(objects)))]
    if rng.integers(4) == 0:  # colour, asked of an object named by its other attributes when they are unique
        for keys in (("shape",), ("size", "shape"), ("texture", "shape"), ("size", "texture", "shape")):
            attrs = {k: obj[k] for k in keys}
            if sum(_matches(o, attrs) for o in objects) == 1:
                return f"what colour is the {_noun(attrs)}?", obj["colour"]
    attr = list(_ATTRS)[int(rng.integers(3))]
    return f"what {attr} is the {obj['colour']} object?", obj[attr]


def _pair(rng, objects):
    i, j = rng.choice(len(objects), size=2, replace=False)
    return objects[i], objects[j]


def _compare(rng, objects):
    attr = list(_ATTRS)[int(rng.integers(3))]
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    (a, b), same = _choose(rng, pairs, lambda p: p[0][attr] == p[1][attr], bool(rng.integers(2)))
    return (f"does the {a['colour']} object have the same {attr} as the {b['colour']} object?",
            "yes" if same else "no")


def _spatial(rng, objects):
    want = bool(rng.integers(2))
    for _ in range(100):
        a, b = _pair(rng, objects)
        relation = ("left of", "right of", "above", "below")[int(rng.integers(4))]
        axis, sign = {"left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1)}[relation]
        gap = sign * (a[axis] - b[axis])
        if abs(gap) > 2.0 and (gap > 0) == want:  # near-equal positions would be ambiguous
            return f"is the {a['colour']} object {relation} the {b['colour']} object?", "yes" if want else "no"
    return None


_ASK = {"existence": _existence, "counting": _counting, "query": _query, "compare": _compare, "spatial": _spatial}


def make_vqa_scene(seed: int, split: str, index: int, img_size: int = 32) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """``(image (3, S, S) uint8, [(question, answer, family), ...])``, one question per family that
    the scene can answer with the answer drawn (a rare scene gives fewer)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    objects = _draw_objects(rng, img_size)
    image = np.full((img_size, img_size, 3), 110, dtype=np.float32)
    for obj in objects:
        _paint(image, obj, img_size)
    image += rng.normal(0, 6, size=image.shape)
    questions = []
    for family in FAMILIES:
        asked = _ASK[family](rng, objects)
        if asked is not None:
            questions.append((*asked, family))
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1), questions
