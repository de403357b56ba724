"""Drawing synthetic pedestrians: identity looks, camera looks and one rendered crop.

An identity is fixed clothing (colours, stripes, sleeves, bag, hat, build); a camera is a
mild lighting change (brightness, colour cast, left-right gradient) and a wall/floor palette,
while the scenery in front of the wall changes per crop, as it does when people walk through
a real view. Each crop adds jitter of position, scale, stride, view (front/back) and bag side,
so matching needs the person, not the pixels. Everything comes from the caller's rng.
Harder sets (all off by default, leaving the default output unchanged): identities that are
variations of a few shared outfits (``similar_look``) and crops with an occluder in front of the
person (``render_crop(..., occlusion=p)``).
The camera effects are kept mild on purpose: with strong ones the camera, not the person,
decides the nearest neighbour of an untrained network, and the data would test nothing.
"""
import colorsys
from dataclasses import dataclass

import numpy as np

PATTERNS = ("plain", "plain", "hstripes", "vstripes", "checks", "logo")
BAGS = ("none", "none", "backpack", "shoulder", "handbag")
SUPERSAMPLE = 2


def random_colour(rng, saturation=(0.15, 0.95), value=(0.12, 0.95)):
    hue = rng.uniform(0.0, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value)))


@dataclass(frozen=True)
class PersonLook:
    skin: np.ndarray
    hair: np.ndarray
    hat: np.ndarray  # None: no hat
    shirt: np.ndarray
    pattern: str
    pattern_colour: np.ndarray
    pattern_period: float
    long_sleeves: bool
    trousers: np.ndarray
    shorts: bool
    shoes: np.ndarray
    bag: str
    bag_colour: np.ndarray
    build: float
    stature: float


@dataclass(frozen=True)
class CameraLook:
    gain: np.ndarray
    light_slope: float
    wall: np.ndarray
    floor: np.ndarray
    horizon: float


def random_look(rng):
    """An identity: clothing colours and patterns that stay the same in every camera."""
    skin_tone = rng.uniform(0.25, 0.95)
    return PersonLook(
        skin=np.array([0.95, 0.78, 0.62]) * skin_tone + np.array([0.05, 0.03, 0.02]),
        hair=random_colour(rng, (0.1, 0.6), (0.05, 0.45)),
        hat=random_colour(rng) if rng.uniform() < 0.2 else None,
        shirt=random_colour(rng),
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        pattern_colour=random_colour(rng),
        pattern_period=rng.uniform(0.04, 0.1),
        long_sleeves=bool(rng.uniform() < 0.5),
        trousers=random_colour(rng, (0.05, 0.8), (0.08, 0.85)),
        shorts=bool(rng.uniform() < 0.25),
        shoes=random_colour(rng, (0.0, 0.5), (0.05, 0.9)),
        bag=BAGS[rng.integers(len(BAGS))],
        bag_colour=random_colour(rng),
        build=rng.uniform(0.8, 1.2),
        stature=rng.uniform(0.92, 1.04),
    )


def _nudge(colour, rng, spread):
    return np.clip(colour + rng.normal(0.0, spread, size=3), 0.0, 1.0)


def similar_look(base, rng, spread):
    """A variation of ``base``: the same outfit kind, every colour moved by N(0, spread), and its
    own build, bag side colour and hat choice, so only small differences tell two people apart."""
    return PersonLook(
        skin=_nudge(base.skin, rng, spread),
        hair=_nudge(base.hair, rng, spread),
        hat=_nudge(base.hat, rng, spread) if base.hat is not None and rng.uniform() < 0.7 else None,
        shirt=_nudge(base.shirt, rng, spread),
        pattern=base.pattern,
        pattern_colour=_nudge(base.pattern_colour, rng, spread),
        pattern_period=base.pattern_period * rng.uniform(0.8, 1.25),
        long_sleeves=base.long_sleeves if rng.uniform() < 0.8 else not base.long_sleeves,
        trousers=_nudge(base.trousers, rng, spread),
        shorts=base.shorts,
        shoes=_nudge(base.shoes, rng, spread),
        bag=base.bag if rng.uniform() < 0.7 else BAGS[rng.integers(len(BAGS))],
        bag_colour=_nudge(base.bag_colour, rng, spread),
        build=float(np.clip(base.build + rng.normal(0.0, 0.05), 0.8, 1.2)),
        stature=float(np.clip(base.stature + rng.normal(0.0, 0.02), 0.92, 1.04)),
    )


def random_camera(rng):
    """A camera: its lighting and scenery palette, shared by every crop it takes."""
    cast = 1.0 + rng.normal(0.0, 0.04, size=3)
    return CameraLook(
        gain=np.clip(rng.uniform(0.85, 1.15) * cast, 0.7, 1.3),
        light_slope=rng.uniform(-0.1, 0.1),
        wall=random_colour(rng, (0.0, 0.2), (0.4, 0.7)),
        floor=random_colour(rng, (0.0, 0.2), (0.3, 0.6)),
        horizon=rng.uniform(0.6, 0.8),
    )


class _Canvas:
    """Float RGB image drawn at SUPERSAMPLE x resolution; coordinates in units of the height."""

    def __init__(self, height, width):
        self.height, self.width = height, width
        rows, cols = height * SUPERSAMPLE, width * SUPERSAMPLE
        self.pixels = np.zeros((rows, cols, 3), dtype=np.float32)
        self.y = ((np.arange(rows, dtype=np.float32) + 0.5) / rows)[:, None]
        self.x = ((np.arange(cols, dtype=np.float32) + 0.5) / rows)[None, :]

    def paint(self, mask, colour):
        self.pixels[mask] = colour

    def box(self, top, bottom, left, right):
        return (self.y >= top) & (self.y < bottom) & (self.x >= left) & (self.x < right)

    def finish(self):
        """Average the supersamples: soft edges like a real camera's."""
        rows, cols = self.height, self.width
        return self.pixels.reshape(rows, SUPERSAMPLE, cols, SUPERSAMPLE, 3).mean(axis=(1, 3))


def _draw_background(canvas, camera, rng):
    """The camera's wall and floor, with scenery that changes as people walk through."""
    aspect = canvas.width / canvas.height
    wall = camera.wall * (0.9 + 0.2 * canvas.y)
    canvas.pixels[:] = np.broadcast_to(wall[..., None, :], canvas.pixels.shape)
    for _ in range(rng.integers(1, 4)):
        top, left = rng.uniform(0.0, 0.7), rng.uniform(-0.3, 1.0) * aspect
        shade = camera.wall * rng.uniform(0.7, 1.3) + rng.normal(0.0, 0.05, size=3)
        canvas.paint(canvas.box(top, top + rng.uniform(0.1, 0.4), left,
                                left + rng.uniform(0.1, 0.5) * aspect), np.clip(shade, 0, 1))
    horizon = camera.horizon + rng.normal(0.0, 0.03)
    canvas.paint(canvas.box(horizon, 2.0, -1.0, 2.0), camera.floor)


def _draw_person(canvas, look, rng, scale, centre_shift, top_shift):
    """Paint the person back to front; geometry in fractions of the person's height."""
    ph = 0.9 * look.stature * scale
    top = 0.05 + top_shift
    cx = canvas.width / canvas.height / 2 + centre_shift
    y = (canvas.y - top) / ph  # 0 at the crown, 1 at the soles
    x = canvas.x
    shoulder = 0.125 * look.build * ph
    stride = rng.uniform(-1.0, 1.0)
    back_view = rng.uniform() < 0.5
    side = 1.0 if rng.uniform() < 0.5 else -1.0  # which side a bag hangs (mirror)

    # legs, swinging with the stride, and shoes
    leg_half = 0.42 * shoulder / 2
    for sign in (-1.0, 1.0):
        leg_cx = cx + sign * 0.45 * shoulder + sign * stride * 0.12 * ph * np.clip(y - 0.52, 0, 1)
        leg = (y >= 0.5) & (y < 0.95) & (np.abs(x - leg_cx) < leg_half)
        canvas.paint(leg, look.trousers)
        if look.shorts:
            canvas.paint(leg & (y >= 0.68), look.skin)
        canvas.paint((y >= 0.93) & (y < 0.99) & (np.abs(x - leg_cx) < leg_half * 1.25), look.shoes)

    # torso, tapering to the waist, with its pattern
    half = shoulder * (1.0 - 0.3 * np.clip(y - 0.16, 0, 1))
    torso = (y >= 0.155) & (y < 0.53) & (np.abs(x - cx) < half)
    canvas.paint(torso, look.shirt)
    period = look.pattern_period
    if look.pattern == "hstripes":
        canvas.paint(torso & ((y / period) % 1.0 < 0.5), look.pattern_colour)
    elif look.pattern == "vstripes":
        canvas.paint(torso & (((x - cx) / (period * ph)) % 1.0 < 0.5), look.pattern_colour)
    elif look.pattern == "checks":
        checks = ((y / period) % 1.0 < 0.5) ^ (((x - cx) / (period * ph)) % 1.0 < 0.5)
        canvas.paint(torso & checks, look.pattern_colour)
    elif look.pattern == "logo" and not back_view:
        canvas.paint(torso & (y >= 0.24) & (y < 0.34) & (np.abs(x - cx) < 0.4 * shoulder),
                     look.pattern_colour)

    # bags: a backpack covers the back and shows straps from the front
    if look.bag == "backpack":
        if back_view:
            canvas.paint((y >= 0.18) & (y < 0.45) & (np.abs(x - cx) < 0.75 * shoulder),
                         look.bag_colour)
        else:
            straps = (np.abs(np.abs(x - cx) - 0.55 * shoulder) < 0.12 * shoulder)
            canvas.paint(straps & (y >= 0.155) & (y < 0.36), look.bag_colour)
    elif look.bag == "shoulder":
        strap_x = cx - side * shoulder + side * (y - 0.16) / 0.3 * 2 * shoulder
        canvas.paint((y >= 0.155) & (y < 0.46) & (np.abs(x - strap_x) < 0.012 * ph),
                     look.bag_colour)
        bag_cx = cx + side * 1.1 * shoulder
        canvas.paint((y >= 0.42) & (y < 0.57) & (np.abs(x - bag_cx) < 0.35 * shoulder),
                     look.bag_colour)

    # arms swinging against the legs, sleeves, hands
    arm_half = 0.028 * ph
    for sign in (-1.0, 1.0):
        arm_cx = cx + sign * (shoulder + arm_half * 0.7) - sign * stride * 0.06 * ph * np.clip(
            y - 0.16, 0, 1
        )
        arm = (y >= 0.16) & (y < 0.5) & (np.abs(x - arm_cx) < arm_half)
        canvas.paint(arm, look.shirt)
        if not look.long_sleeves:
            canvas.paint(arm & (y >= 0.28), look.skin)
        canvas.paint((y >= 0.5) & (y < 0.545) & (np.abs(x - arm_cx) < arm_half), look.skin)
        if look.bag == "handbag" and sign == side:
            canvas.paint((y >= 0.53) & (y < 0.64) & (np.abs(x - arm_cx) < 0.3 * shoulder),
                         look.bag_colour)

    # neck, head, hair (all hair from behind), hat
    canvas.paint((y >= 0.13) & (y < 0.16) & (np.abs(x - cx) < 0.025 * ph), look.skin)
    head = ((x - cx) / (0.05 * ph)) ** 2 + ((y - 0.075) / 0.068) ** 2 <= 1.0
    canvas.paint(head, look.hair if back_view else look.skin)
    if not back_view:
        canvas.paint(head & (y < 0.045), look.hair)
    if look.hat is not None:
        canvas.paint(head & (y < 0.05), look.hat)


def _apply_camera(image, camera, rng):
    width = image.shape[1]
    ramp = 1.0 + camera.light_slope * np.linspace(-1.0, 1.0, width, dtype=np.float32)
    image = image * camera.gain[None, None, :] * ramp[None, :, None]
    image = image + rng.normal(0.0, 0.02, size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw_occluder(canvas, rng):
    """Something between the camera and the person: a post, a passer-by's side or a low wall."""
    aspect = canvas.width / canvas.height
    colour = random_colour(rng, (0.0, 0.6), (0.1, 0.8))
    shape = rng.integers(3)
    if shape == 0:  # a vertical post or pole
        left = rng.uniform(0.0, 0.8) * aspect
        box = canvas.box(0.0, 2.0, left, left + rng.uniform(0.12, 0.3) * aspect)
    elif shape == 1:  # a passer-by's shoulder from one side
        right = rng.uniform() < 0.5
        reach = rng.uniform(0.2, 0.4) * aspect
        box = canvas.box(rng.uniform(0.1, 0.4), 2.0, aspect - reach if right else -1.0, 2.0 if right else reach)
    else:  # a low wall or bench hiding the legs
        box = canvas.box(rng.uniform(0.6, 0.8), 2.0, -1.0, 2.0)
    canvas.paint(box, colour)


def render_crop(look, camera, height, width, rng, kind="person", occlusion=0.0):
    """One uint8 (height, width, 3) crop of ``look`` seen by ``camera``.

    ``kind``: "person" (a well-framed detection), "far" (a small, off-centre person, like
    Market's distractors) or "junk" (background with a sliver of a body: a failed detection).
    ``occlusion``: probability that an occluder covers part of a "person" crop (0: never, and
    no random numbers are drawn for it).
    """
    canvas = _Canvas(height, width)
    _draw_background(canvas, camera, rng)
    aspect = width / height
    if kind == "person":
        _draw_person(canvas, look, rng, rng.uniform(0.92, 1.05), rng.normal(0, 0.025 * aspect),
                     rng.normal(0.0, 0.015))
    elif kind == "far":
        _draw_person(canvas, look, rng, rng.uniform(0.45, 0.7), rng.uniform(-0.3, 0.3) * aspect,
                     rng.uniform(0.1, 0.35))
    elif kind == "junk":
        _draw_person(canvas, look, rng, rng.uniform(1.2, 1.8), rng.choice([-1, 1]) * 0.7 * aspect,
                     rng.uniform(-0.9, -0.3))
    else:
        raise ValueError(f"kind must be person, far or junk, got {kind!r}")
    if kind == "person" and occlusion > 0 and rng.uniform() < occlusion:
        _draw_occluder(canvas, rng)
    return _apply_camera(canvas.finish(), camera, rng)
