"""Text-to-image data sets (CUHK-PEDES, ICFG-PEDES, RSTPReid) in a protection run: defaults, checks, scores.

Only images are protected: every test image (the gallery) once, and with ``--save_image_npy`` the
train images for the recovery attack. The captions are encoded once by the text tower of the same
CLIP (``MODEL.FORMAT irra | clip``) and ranked against the original images (clean2clean) and the
protected images (clean2encry) with IRRA's ``rank`` (``evaluation.text_to_image``); image-to-text on
the transposed similarity with ``TEXT.IMAGE_TO_TEXT True``. A caption cannot be protected, so the
two other modes do not exist.

The CLIP input contract is the default of these data sets and of the irra/clip formats, key by key
unless the user set it: IRRA's 384 x 128 and CLIP's mean/std (IRRA's test transform: bilinear
resize, ToTensor, Normalize), and EPSILON relative 0.06 (docs/text_to_image.md, "EPSILON for CLIP
image features": the relative squared feature error the paper's absolute 0.03 allows AGW).
"""
import torch

from configs.keys import set_key
from data.splits import TEXT_IMAGE_DATASETS
from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, IRRA_IMG_SIZE
from evaluation.text_to_image import evaluate_text_protection
from utils.errors import CheckpointError

CLIP_FORMATS = ("irra", "clip")
CLIP_INPUT_DEFAULTS = {
    "INPUT.IMG_SIZE": list(IRRA_IMG_SIZE),
    "INPUT.PIXEL_MEAN": list(CLIP_PIXEL_MEAN),
    "INPUT.PIXEL_STD": list(CLIP_PIXEL_STD),
    "PIXELFADE.EPSILON_MODE": "relative",
    "PIXELFADE.EPSILON": 0.06,
}
PRIMARY_PROTOCOL = "text_to_image"
# What each mode and direction ranks, for results.md.
MODE_MEANINGS = {
    "text_to_image": {
        "clean2clean": "each caption ranks the ORIGINAL test images (retrieval without protection)",
        "clean2encry": "each caption ranks the PROTECTED test images (the service searching its protected gallery)",
    },
    "image_to_text": {
        "clean2clean": "each ORIGINAL test image ranks the captions",
        "clean2encry": "each PROTECTED test image ranks the captions",
    },
}
COLUMNS = (("Rank-1", "rank1"), ("Rank-5", "rank5"), ("Rank-10", "rank10"), ("mAP", "mAP"), ("mINP", "mINP"))


def is_text_image(cfg):
    return cfg.DATASETS.NAMES in TEXT_IMAGE_DATASETS


def uses_clip_input(cfg):
    return is_text_image(cfg) or cfg.MODEL.FORMAT in CLIP_FORMATS


def apply_input_defaults(cfg, user_keys):
    """CLIP's input contract and EPSILON on a defrosted ``cfg`` of a text-to-image or irra/clip run, for
    each key of ``CLIP_INPUT_DEFAULTS`` the user did not set (``user_keys``)."""
    if uses_clip_input(cfg):
        for key, value in CLIP_INPUT_DEFAULTS.items():
            if key not in user_keys:
                set_key(cfg, key, value)


def fingerprint_entries(cfg):
    """What a text-to-image run adds to the run fingerprint: the image transform the batches went through."""
    if not uses_clip_input(cfg):
        return {}
    height, width = (int(v) for v in cfg.INPUT.IMG_SIZE)
    return {"input_transform": f"IRRA test transform: bilinear Resize({height}, {width}), ToTensor, Normalize "
                               f"(INPUT.PIXEL_MEAN/STD)"}


def validate(cfg, check):
    """Settings a text-to-image run needs; ``check`` is protect_settings' checker."""
    check.boolean("TEXT.IMAGE_TO_TEXT")
    check.integer("TEXT.CAPTION_BATCH", 1)
    if not is_text_image(cfg):
        return
    check.choice("MODEL.FORMAT", ("auto",) + CLIP_FORMATS)
    check.choice("INPUT.MODEL_INPUT", ("normalized",))
    if cfg.TEST.EVAL_MODELS:
        check.fail("TEST.EVAL_MODELS", "empty with a text-to-image data set (image models cannot read captions; "
                                       "score identity leakage with ATTACK.EVAL_MODELS)")
    check.choice("TEST.RE_RANKING", ("off",))


def require_text_tower(cfg, model):
    """The authorization model of a text-to-image run must encode captions too (an irra or clip model)."""
    if is_text_image(cfg) and not hasattr(model, "encode_captions"):
        raise CheckpointError(
            f"{cfg.TEST.WEIGHT or 'the untrained model'}: --dataset {cfg.DATASETS.NAMES} needs a CLIP model with a "
            f"text tower (MODEL.FORMAT irra or clip; without a checkpoint also MODEL.NAME clip_tiny or ViT-B-16), "
            f"got {type(model).__name__}"
        )


def score_text_image(cfg, plan, model, gathered, protected_keys):
    """``reid`` (text-to-image, clean2clean and clean2encry), ``reid_protocols`` and the primary protocol.

    ``protected_keys``: {results entry: gathered key of the protected features}, e.g. ``{"reid":
    "protected_features", "reid_stored_png": "stored_features"}``; the captions are encoded once.
    Gallery rows are ranked in the data set's order (``plan.gallery_order``).
    """
    rows = torch.tensor(plan.gallery_order, dtype=torch.long)
    records = plan.splits["test"].records
    image_pids = [records[row].pid for row in plan.gallery_order]
    captions = model.encode_captions([caption.text for caption in plan.captions], cfg.TEXT.CAPTION_BATCH).cpu()
    caption_pids = [caption.pid for caption in plan.captions]
    results = {"reid_primary_protocol": PRIMARY_PROTOCOL}
    for entry, key in protected_keys.items():
        scores = evaluate_text_protection(captions, gathered["original_features"][rows], gathered[key][rows],
                                          caption_pids, image_pids, image_to_text=cfg.TEXT.IMAGE_TO_TEXT)
        results[entry] = scores[PRIMARY_PROTOCOL]
        if entry == "reid":
            results["reid_protocols"] = scores
    return results


def metrics_table(modes, meanings):
    """A Markdown table of mode -> metrics (percent, one decimal) and one line per mode saying what it ranks."""
    lines = ["| mode | " + " | ".join(title for title, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {mode} | " + " | ".join(f"{100.0 * scores[key]:.1f}" for _, key in COLUMNS) + " |"
              for mode, scores in modes.items()]
    return lines + [""] + [f"- {mode}: {meanings[mode]}" for mode in modes]


def text_image_markdown(results):
    """results.md lines of a text-to-image run: one table per direction, what each mode means."""
    first = results["reid"]["clean2clean"]
    intro = (f"Text-to-image retrieval ({first['num_queries']} captions, {first['num_gallery']} test images; IRRA's "
             "rank: cosine of L2-normalised CLIP features, no filtering), features of the final protected images. "
             "Captions are never protected, so encry2encry and encry2clean do not exist:")
    lines = [intro, ""]
    for direction, modes in results["reid_protocols"].items():
        lines += [f"**{direction}**:", ""] + metrics_table(modes, MODE_MEANINGS[direction]) + [""]
    if first["clipped_ranks"]:
        lines += [(f"The gallery is shorter than Rank-{first['clipped_ranks'][0]}: such ranks take the cumulative "
                   "match at the last position (IRRA fails there)."), ""]
    if "reid_stored_png" in results:
        lines += ["Text-to-image, protected images stored as 8-bit PNG and read back:", ""]
        lines += metrics_table(results["reid_stored_png"], MODE_MEANINGS[PRIMARY_PROTOCOL]) + [""]
    return lines
