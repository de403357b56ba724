"""Small synthetic text-to-image Re-ID data sets in the CUHK-PEDES, ICFG-PEDES and RSTPReid layouts.

The people are those of :mod:`data.synthetic` (same looks, cameras and renderer); each image gets
captions written from what the renderer draws for that person: hair, hat, shirt colour, pattern
and sleeves, trousers or shorts, shoes, bag, build and height. Several sentence forms, attribute
orders and colour words vary from caption to caption, so a small model has to learn the attributes,
not a template. Output depends only on the arguments.
"""
import colorsys
import json
import os

from .datasets.text_person import LAYOUTS
from .synthetic import DEFAULTS, _check_args, _new_folder, _rng, _save_jpg, _World

# Stream tag of the captions (data.synthetic uses 0..6 for its own streams).
_CAPTION = 50
TEXT_DATASETS = tuple(LAYOUTS)
# Captions per image as in the real sets: CUHK-PEDES and RSTPReid 2, ICFG-PEDES 1.
CAPTIONS_PER_IMAGE = {"cuhk_pedes": 2, "icfg_pedes": 1, "rstpreid": 2}
PATTERN_WORDS = {"hstripes": "horizontally striped", "vstripes": "vertically striped", "checks": "checked"}
BAG_WORDS = {"backpack": "backpack", "shoulder": "shoulder bag", "handbag": "handbag"}
_HUES = ((0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"), (0.53, "cyan"), (0.72, "blue"),
         (0.83, "purple"), (0.94, "pink"), (1.01, "red"))


def colour_name(rgb):
    """A plain colour word for an RGB triple in [0, 1] (black/white/grey by value and saturation, else by hue)."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if value < 0.2:
        return "black"
    if saturation < 0.2:
        return "white" if value > 0.8 else "grey" if value > 0.45 else "dark grey"
    name = next(word for limit, word in _HUES if hue < limit)
    if name in ("orange", "red") and value < 0.55:
        return "brown" if name == "orange" else "dark red"
    return f"dark {name}" if value < 0.4 else name


def look_phrases(look):
    """The attribute phrases of one person (noun phrases; empty strings for what the person lacks)."""
    colour = colour_name(look.shirt)
    garment = "long-sleeved shirt" if look.long_sleeves else "t-shirt"
    if look.pattern in PATTERN_WORDS:
        top = f"a {PATTERN_WORDS[look.pattern]} {colour} and {colour_name(look.pattern_colour)} {garment}"
    elif look.pattern == "logo":
        top = f"a {colour} {garment} with a {colour_name(look.pattern_colour)} logo on the front"
    else:
        top = f"a {colour} {garment}"
    return {
        "top": top,
        "lower": f"{colour_name(look.trousers)} {'shorts' if look.shorts else 'trousers'}",
        "shoes": f"{colour_name(look.shoes)} shoes",
        "hair": f"{colour_name(look.hair)} hair",
        "build": "slim" if look.build < 0.93 else "broad" if look.build > 1.07 else "",
        "height": "tall" if look.stature > 1.0 else "short" if look.stature < 0.96 else "",
        "bag": f"a {colour_name(look.bag_colour)} {BAG_WORDS[look.bag]}" if look.bag in BAG_WORDS else "",
        "hat": f"a {colour_name(look.hat)} hat" if look.hat is not None else "",
    }


def _person(phrases, rng):
    """'tall slim pedestrian' and the like, without an article."""
    noun = ("person", "pedestrian", "walker", "young adult")[rng.integers(4)]
    return " ".join(word for word in (phrases["height"], phrases["build"], noun) if word)


def write_caption(phrases, rng):
    """One caption for a person's phrases; the sentence form and the order of details come from ``rng``."""
    extras = []
    if phrases["bag"]:
        extras.append(("carrying " if rng.uniform() < 0.5 else "with ") + phrases["bag"])
    if phrases["hat"]:
        extras.append("wearing " + phrases["hat"])
    rng.shuffle(extras)
    person = _person(phrases, rng)
    form = rng.integers(4)
    if form in (1, 2):  # "the person is with a bag" reads badly
        extras = ["carrying " + extra[len("with "):] if extra.startswith("with ") else extra for extra in extras]
    if form == 0:
        text = f"a {person} with {phrases['hair']} wearing {phrases['top']}, {phrases['lower']} and {phrases['shoes']}"
        text += "".join(f", {extra}" for extra in extras) + "."
    elif form == 1:
        text = f"the {person} is dressed in {phrases['lower']} and {phrases['top']}, with {phrases['shoes']}."
        text += f" the person is {' and '.join(extras)}." if extras else ""
    elif form == 2:
        clothes = [phrases["top"], phrases["lower"], phrases["shoes"]]
        rng.shuffle(clothes)
        text = f"this {person} has {phrases['hair']} and wears {', '.join(clothes[:-1])} and {clothes[-1]}."
        text += f" the person is {' and '.join(extras)}." if extras else ""
    else:
        text = f"a {person}: {phrases['top']} over {phrases['lower']}, {phrases['shoes']}, {phrases['hair']}"
        text += "".join(f", {extra}" for extra in extras) + "."
    return ". ".join(sentence[:1].upper() + sentence[1:] for sentence in text.split(". "))


def _image_path(name, pid, shot, cam, split):
    if name == "cuhk_pedes":
        return f"{split}_query/p{pid}_s{shot}.jpg"
    if name == "icfg_pedes":
        return f"{split}/{pid:04d}/{pid:04d}_{shot:03d}_{cam + 1:02d}.jpg"
    return f"{pid:04d}_c{cam + 1}_{shot:04d}.jpg"


def split_of(identity, num_ids, name):
    """First half train; CUHK-PEDES and RSTPReid give an eighth of the identities to val; the rest test."""
    num_train = num_ids // 2
    num_val = 0 if name == "icfg_pedes" else num_ids // 8
    if identity < num_train:
        return "train"
    return "val" if identity < num_train + num_val else "test"


def make_text_dataset(name, root, num_ids=DEFAULTS["num_ids"], num_cams=DEFAULTS["num_cams"],
                      images_per_id_cam=DEFAULTS["images_per_id_cam"], height=DEFAULTS["height"],
                      width=DEFAULTS["width"], seed=DEFAULTS["seed"], captions_per_image=None):
    """Write ``<root>/<CUHK-PEDES | ICFG-PEDES | RSTPReid>/`` (imgs/ and the JSON) and return that folder.

    Each identity has ``images_per_id_cam`` images in each of ``num_cams`` cameras, every image
    ``captions_per_image`` captions (default: the real set's). Ids start at 1 for CUHK-PEDES and at 0
    for the others, so the readers' train labels are contiguous from 0.
    """
    if name not in LAYOUTS:
        raise ValueError(f"text data set must be one of {', '.join(LAYOUTS)}, got {name!r}")
    _check_args(num_ids, num_cams, images_per_id_cam, height, width)
    captions_per_image = CAPTIONS_PER_IMAGE[name] if captions_per_image is None else captions_per_image
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    layout = LAYOUTS[name]
    folder = _new_folder(os.path.join(os.fspath(root), layout.folder))
    world = _World(num_ids, num_cams, height, width, seed)
    records = []
    for identity in range(num_ids):
        pid = identity + layout.train_id_offset
        split = split_of(identity, num_ids, name)
        phrases = look_phrases(world.looks[identity])
        for cam in range(num_cams):
            for shot in range(images_per_id_cam):
                number = cam * images_per_id_cam + shot
                relative = _image_path(name, pid, number, cam, split)
                path = os.path.join(folder, "imgs", relative)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _save_jpg(path, world.person(identity, cam, shot))
                rng = _rng(seed, _CAPTION, identity, number)
                captions = [write_caption(phrases, rng) for _ in range(captions_per_image)]
                records.append({"split": split, "captions": captions, layout.path_key: relative, "id": pid,
                                "processed_tokens": [caption.lower().rstrip(".").split() for caption in captions]})
    with open(os.path.join(folder, layout.annotations[0]), "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1)
    return folder


def make_cuhk_pedes(root, **sizes):
    return make_text_dataset("cuhk_pedes", root, **sizes)


def make_icfg_pedes(root, **sizes):
    return make_text_dataset("icfg_pedes", root, **sizes)


def make_rstpreid(root, **sizes):
    return make_text_dataset("rstpreid", root, **sizes)
