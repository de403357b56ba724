"""CLIP encoders for text-to-image Re-ID: the ``irra`` and ``clip`` model formats and CLIP's caption tokenizer.

The image encoder is PixelFade's authorization model f: a ViT CLIP image tower whose feature is the
class token after ``ln_post`` times ``proj`` (512-d for ViT-B/16, not normalised), what IRRA's
``encode_image`` returns and open_clip's ``encode_image(x, normalize=False)`` computes. The text
tower of the same weights encodes captions: the token at the end-of-text position (the argmax of
the ids) after ``ln_final`` times ``text_projection``. open_clip builds the architecture offline
(random weights, nothing downloaded); every size is read from the state dict's shapes, so any
ViT CLIP-shaped file loads. Weights are cast to fp32 and computed in fp32 (IRRA stores part of
them in fp16).

Formats:

- ``irra``: anosorae/IRRA's ``best.pth`` (``{'model': state_dict, ...}``): CLIP under ``base_model.``;
  its training heads (``classifier``, ``cross_attn``, ``cross_modal_transformer``, ``ln_pre_t``,
  ``ln_pre_i``, top-level ``ln_post``, ``mlm_head``) are ignored and reported; it has no
  ``logit_scale``. Captions use IRRA's vocabulary (``<|mask|>`` at 49405).
- ``clip``: a plain OpenAI / open_clip CLIP state dict (``visual.*``, ``transformer.*``, ...); OpenAI's
  ``input_resolution``, ``context_length`` and ``vocab_size`` entries are ignored.

``open_clip`` is imported on first use: importing it takes seconds and most runs never need it.
"""
import functools
import gzip
import html
import itertools
import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, denormalize, normalize
from utils.errors import CheckpointError, ConfigError

from .checkpoint import read_state
from .formats import MODEL_FORMATS, ModelFormat
from .load_report import LoadReport

# MODEL.NAME -> CLIP sizes when no checkpoint is given (with one, the file's shapes decide).
ARCHITECTURES = {
    # OpenAI CLIP ViT-B/16, IRRA's backbone.
    "ViT-B-16": {"embed_dim": 512, "vision_width": 768, "vision_layers": 12, "patch_size": 16,
                 "text_width": 512, "text_layers": 12, "context_length": 77, "vocab_size": 49408,
                 "vision_mlp_ratio": 4.0, "text_mlp_ratio": 4.0},
    # A small CLIP for CPU tests and demos.
    "clip_tiny": {"embed_dim": 64, "vision_width": 64, "vision_layers": 2, "patch_size": 16,
                  "text_width": 64, "text_layers": 2, "context_length": 77, "vocab_size": 49408,
                  "vision_mlp_ratio": 4.0, "text_mlp_ratio": 4.0},
}
# MODEL.NAME of the CLIP built before a checkpoint's shapes replace it (sized_by_file).
PLACEHOLDER = "sized by the checkpoint"
# OpenAI's rule (IRRA's too): one attention head per 64 channels in both towers.
HEAD_WIDTH = 64
IRRA_PREFIX = "base_model."
IRRA_HEADS = ("classifier.", "cross_attn.", "cross_modal_transformer.", "ln_pre_t.", "ln_pre_i.", "ln_post.",
              "mlm_head.")
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
TEXT_BATCH = 256

# Tokenizer: CLIP uses the first 49152 - 256 - 2 merges of bpe_simple_vocab_16e6.txt.gz.
NUM_MERGES = 49152 - 256 - 2
SOT, EOT, MASK = "<|startoftext|>", "<|endoftext|>", "<|mask|>"
VOCABULARIES = ("clip", "irra")
_WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"

FEATURE_DOC = (
    "CLIP ViT image tower: class token after ln_post @ proj (512-d for ViT-B/16, not normalised), "
    "fp32; input 384 x 128 normalised with CLIP's mean/std (IRRA); captions through the text tower"
)


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------
@functools.cache
def _bpe_merges():
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1:NUM_MERGES + 1])


def clean_caption(text):
    """IRRA's (and OpenAI CLIP's) cleaning: ftfy, HTML unescaped twice, whitespace runs -> one space, lower case."""
    import ftfy
    import regex

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class CaptionTokenizer:
    """CLIP's byte-level BPE over the vocabulary shipped in the open_clip wheel.

    ``vocabulary`` ``clip``: OpenAI's ids (``<|startoftext|>`` 49406, ``<|endoftext|>`` 49407).
    ``irra``: IRRA's change: the token of the last BPE merge (``jekyll</w>``, id 49405) is dropped and
    ``<|mask|>`` takes its id; every other id is unchanged. IRRA still applies that merge and then
    fails on the word; here the merge is not applied, so the word becomes its two parts.
    ``tokenize`` gives ``[sot] + tokens + [eot]`` zero-padded to ``context_length``, truncated to it
    with the last id forced to eot.
    """

    def __init__(self, vocabulary="clip", context_length=77):
        import regex
        from open_clip.tokenizer import bytes_to_unicode

        if vocabulary not in VOCABULARIES:
            raise ConfigError(f"caption vocabulary must be one of {', '.join(VOCABULARIES)}, got {vocabulary!r}")
        if context_length < 2:
            raise ConfigError(f"text context length must be >= 2 (sot and eot), got {context_length}")
        self.vocabulary = vocabulary
        self.context_length = int(context_length)
        self.byte_encoder = bytes_to_unicode()
        merges = list(_bpe_merges())
        symbols = list(self.byte_encoder.values())
        tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges]
        specials = [SOT, EOT]
        if vocabulary == "irra":
            tokens.pop()
            merges.pop()
            specials = [MASK] + specials
        self.encoder = {token: index for index, token in enumerate(tokens + specials)}
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        special_pattern = "|".join(regex.escape(token) for token in specials)
        self.pattern = regex.compile(special_pattern + "|" + _WORD_PATTERN, regex.IGNORECASE)
        self.specials = frozenset(specials)
        self._cache = {}

    def bpe(self, word):
        """The BPE symbols of one pre-token (already byte-mapped), lowest-rank merge first."""
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(itertools.pairwise(symbols))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, index = [], 0
            while index < len(symbols):
                if index < len(symbols) - 1 and (symbols[index], symbols[index + 1]) == best:
                    merged.append(symbols[index] + symbols[index + 1])
                    index += 2
                else:
                    merged.append(symbols[index])
                    index += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols

    def encode(self, text):
        """Token ids of one caption, without sot/eot."""
        ids = []
        for piece in self.pattern.findall(clean_caption(text)):
            if piece in self.specials:
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_encoder[byte] for byte in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(mapped))
        return ids

    def tokenize(self, captions):
        """(N, context_length) int64 ids of a list of captions."""
        if isinstance(captions, str):
            captions = [captions]
        result = torch.zeros(len(captions), self.context_length, dtype=torch.long)
        for row, caption in enumerate(captions):
            ids = [self.sot_id] + self.encode(caption) + [self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id
            result[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result


@functools.lru_cache(maxsize=4)
def caption_tokenizer(vocabulary="clip", context_length=77):
    """A shared tokenizer (building one reads the 49k merges)."""
    return CaptionTokenizer(vocabulary, context_length)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
def build_open_clip(sizes, image_size):
    """An open_clip ``CLIP`` (QuickGELU, random weights, fp32) of the given sizes and (H, W) input."""
    from open_clip.model import CLIP

    vision = {"width": sizes["vision_width"], "layers": sizes["vision_layers"], "patch_size": sizes["patch_size"],
              "image_size": tuple(int(v) for v in image_size), "head_width": HEAD_WIDTH,
              "mlp_ratio": sizes["vision_mlp_ratio"]}
    text = {"width": sizes["text_width"], "layers": sizes["text_layers"],
            "heads": max(1, sizes["text_width"] // HEAD_WIDTH), "context_length": sizes["context_length"],
            "vocab_size": sizes["vocab_size"], "mlp_ratio": sizes["text_mlp_ratio"]}
    return CLIP(embed_dim=sizes["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True).float()


class ClipReIDModel(nn.Module):
    """The authorization model f (image features) with the text tower of the same CLIP.

    ``forward`` takes a batch normalised with ``input_mean``/``input_std`` (INPUT.PIXEL_MEAN/STD)
    and re-normalises it with CLIP's statistics when they differ (identity when they are CLIP's).
    """

    def __init__(self, sizes, image_size, vocabulary, input_mean=CLIP_PIXEL_MEAN, input_std=CLIP_PIXEL_STD,
                 architecture="custom", caption_batch=TEXT_BATCH):
        super().__init__()
        self.vocabulary = vocabulary
        self.caption_batch = int(caption_batch)
        self.architecture = architecture
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.convert_input = (self.input_mean, self.input_std) != (CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)
        self.set_clip(build_open_clip(sizes, image_size), sizes, image_size)

    def set_clip(self, clip, sizes, image_size):
        self.clip = clip
        self.sizes = dict(sizes)
        self.image_size = tuple(int(v) for v in image_size)
        self.feature_dim = int(sizes["embed_dim"])

    def forward(self, images):
        if self.convert_input:
            images = normalize(denormalize(images, self.input_mean, self.input_std), CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)
        return self.clip.encode_image(images, normalize=False)

    @property
    def tokenizer(self):
        return caption_tokenizer(self.vocabulary, self.sizes["context_length"])

    def encode_token_ids(self, ids):
        """(N, context) ids -> (N, embed_dim) text features (not normalised)."""
        return self.clip.encode_text(ids, normalize=False)

    def encode_captions(self, captions, batch_size=None):
        """Text features of a list of captions, ``batch_size`` (default TEXT.CAPTION_BATCH) at a time, no gradients."""
        return encode_captions(self, captions, batch_size)


def encode_captions(model, captions, batch_size=None):
    """(N, embed_dim) fp32 text features of ``captions`` through ``model``'s text tower, in batches."""
    batch_size = model.caption_batch if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"caption batch size (TEXT.CAPTION_BATCH) must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    tokenizer = model.tokenizer
    chunks = []
    with torch.no_grad():
        for start in range(0, len(captions), batch_size):
            ids = tokenizer.tokenize(list(captions[start:start + batch_size])).to(device)
            chunks.append(model.encode_token_ids(ids).float())
    if not chunks:
        return torch.zeros(0, model.feature_dim, device=device)
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------------------
# Sizes from a state dict
# ------------------------------------------------------------------------------------------------
def _block_count(state, prefix):
    indices = {key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)}
    return len({index for index in indices if index.isdigit()})


def _shape(state, key, source):
    if key not in state:
        raise CheckpointError(f"{source}: not a ViT CLIP state dict: it has no {key}")
    return tuple(state[key].shape)


def infer_sizes(state, source):
    """CLIP sizes from the shapes of a (prefix-free) state dict, and its number of image patches."""
    if any(key.startswith("visual.attnpool.") for key in state):
        raise CheckpointError(f"{source}: a ResNet CLIP image tower (visual.attnpool); only ViT CLIP models load")
    conv = _shape(state, "visual.conv1.weight", source)
    if len(conv) != 4 or conv[2] != conv[3]:
        raise CheckpointError(f"{source}: visual.conv1.weight has shape {conv}, expected (width, 3, patch, patch)")
    vision_width, patch = conv[0], conv[2]
    text_width = _shape(state, "ln_final.weight", source)[0]
    sizes = {
        "embed_dim": _shape(state, "visual.proj", source)[1],
        "vision_width": vision_width,
        "vision_layers": _block_count(state, "visual.transformer.resblocks."),
        "patch_size": patch,
        "text_width": text_width,
        "text_layers": _block_count(state, "transformer.resblocks."),
        "context_length": _shape(state, "positional_embedding", source)[0],
        "vocab_size": _shape(state, "token_embedding.weight", source)[0],
    }
    for tower, prefix, width in (("vision", "visual.transformer.resblocks.0.", vision_width),
                                 ("text", "transformer.resblocks.0.", text_width)):
        hidden = _shape(state, prefix + "mlp.c_fc.weight", source)[0]
        sizes[f"{tower}_mlp_ratio"] = hidden / width
    patches = _shape(state, "visual.positional_embedding", source)[0] - 1
    return sizes, patches


def _grid_sizes(patches, patch, aspect):
    """Input sizes (H, W) whose patch grid has ``patches`` cells, closest to the aspect ratio ``aspect`` first."""
    grids = [(rows, patches // rows) for rows in range(1, patches + 1) if patches % rows == 0]
    grids.sort(key=lambda grid: abs(math.log(grid[0] / grid[1] / aspect)))
    return [(rows * patch, cols * patch) for rows, cols in grids]


def image_size_for(patches, patch, configured, source):
    """INPUT.IMG_SIZE when its patch grid has the file's number of patches; else a ConfigError naming sizes that do."""
    height, width = (int(v) for v in configured)
    if height % patch == 0 and width % patch == 0 and (height // patch) * (width // patch) == patches:
        return height, width
    options = ", ".join(f"[{h}, {w}]" for h, w in _grid_sizes(patches, patch, height / width)[:4])
    raise ConfigError(
        f"{source}: the CLIP image tower has positional embeddings for {patches} patches of {patch} pixels, which "
        f"INPUT.IMG_SIZE [{height}, {width}] does not give; set INPUT.IMG_SIZE to one that does (e.g. {options}; "
        f"IRRA: [384, 128]; models trained with overlapping patches, a stride below the patch size, do not load)"
    )


# ------------------------------------------------------------------------------------------------
# The formats
# ------------------------------------------------------------------------------------------------
def _build(cfg, vocabulary):
    name = cfg.MODEL.NAME
    height, width = (int(v) for v in cfg.INPUT.IMG_SIZE)
    if name == PLACEHOLDER:
        sizes = dict(ARCHITECTURES["clip_tiny"], patch_size=_placeholder_patch(height, width))
    elif name in ARCHITECTURES:
        sizes = ARCHITECTURES[name]
    else:
        raise ConfigError(
            f"MODEL.NAME {name!r} is not a CLIP architecture (MODEL.FORMAT {vocabulary}); known: "
            f"{', '.join(ARCHITECTURES)} (with a checkpoint, the file's shapes set the sizes)"
        )
    patch = sizes["patch_size"]
    if height % patch or width % patch or height < patch or width < patch:
        raise ConfigError(f"INPUT.IMG_SIZE [{height}, {width}] must be multiples of the CLIP patch size {patch}")
    if cfg.TEXT.CAPTION_BATCH < 1:
        raise ConfigError(f"TEXT.CAPTION_BATCH must be >= 1, got {cfg.TEXT.CAPTION_BATCH}")
    model = ClipReIDModel(sizes, (height, width), vocabulary, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, name,
                          cfg.TEXT.CAPTION_BATCH)
    return model.eval()


def _placeholder_patch(height, width):
    """The largest patch size up to 16 that tiles a (height, width) input."""
    common = math.gcd(int(height), int(width))
    return max(size for size in range(1, 17) if common % size == 0)


def sized_by_file(cfg):
    """``cfg`` to build a CLIP that a checkpoint will resize: its MODEL.NAME when that is a CLIP
    architecture, else a small placeholder (``clip_tiny`` sizes) at INPUT.IMG_SIZE, so a user with a
    checkpoint never has to name the architecture (loading rebuilds it from the file's shapes)."""
    if cfg.MODEL.NAME in ARCHITECTURES:
        return cfg
    resolved = cfg.clone()
    resolved.defrost()
    resolved.MODEL.NAME = PLACEHOLDER
    resolved.freeze()
    return resolved


def build_irra(cfg):
    """An untrained CLIP of MODEL.NAME at INPUT.IMG_SIZE with IRRA's caption vocabulary."""
    return _build(cfg, "irra")


def build_clip(cfg):
    """An untrained CLIP of MODEL.NAME at INPUT.IMG_SIZE with OpenAI's caption vocabulary."""
    return _build(cfg, "clip")


def split_irra_state(state):
    """IRRA keys -> (CLIP state without ``base_model.``, ignored training-head keys, keys of neither)."""
    clip_state, ignored, other = OrderedDict(), [], []
    for key, tensor in state.items():
        if key.startswith(IRRA_PREFIX):
            clip_state[key[len(IRRA_PREFIX):]] = tensor
        elif key.startswith(IRRA_HEADS):
            ignored.append(key)
        else:
            other.append(key)
    return clip_state, ignored, other


def _as_fp32(tensor):
    return tensor.float() if tensor.is_floating_point() else tensor


def _compare(target, state, source):
    report = LoadReport(source)
    for key, tensor in state.items():
        if key in OPENAI_METADATA:
            report.ignored.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(target[key].shape):
            report.mismatched[key] = (tuple(tensor.shape), tuple(target[key].shape))
        else:
            report.loaded.append(key)
    for key in target:
        if key in state:
            continue
        # logit_scale only scales training logits; IRRA's files do not have it.
        (report.kept_initial if key == "logit_scale" else report.missing).append(key)
    return report


def _load_clip_state(model, state, source, logger, ignored=(), foreign=()):
    if not isinstance(model, ClipReIDModel):
        raise TypeError(f"expected a model built by the irra or clip format, got {type(model).__name__}")
    sizes, patches = infer_sizes(state, source)
    image_size = image_size_for(patches, sizes["patch_size"], model.image_size, source)
    if sizes != model.sizes:
        frozen = not any(parameter.requires_grad for parameter in model.clip.parameters())
        clip = build_open_clip(sizes, image_size).to(next(model.parameters()).device)
        model.set_clip(clip.requires_grad_(not frozen), sizes, image_size)
        model.architecture = "inferred from the file"
    report = _compare(model.clip.state_dict(), state, source)
    report.ignored.extend(ignored)
    report.unexpected.extend(foreign)
    if not report.ok:
        message = f"{source}: weights do not fit a CLIP of the file's sizes: {'; '.join(report.problem_lines())}"
        raise CheckpointError(" ".join(message.split("\n")))
    model.clip.load_state_dict(OrderedDict((key, _as_fp32(state[key])) for key in report.loaded), strict=False)
    model.clip.eval()
    if logger is not None:
        logger.info(report.summary())
        logger.info("%s: CLIP ViT, image %dx%d in %d-pixel patches, embedding %d, vision %dx%d, text %dx%d, "
                    "context %d, vocabulary %d (%s ids)", source, image_size[0], image_size[1], sizes["patch_size"],
                    sizes["embed_dim"], sizes["vision_layers"], sizes["vision_width"], sizes["text_layers"],
                    sizes["text_width"], sizes["context_length"], sizes["vocab_size"], model.vocabulary)
    return report


def load_irra(model, state, source="state dict", logger=None):
    """Copy an IRRA checkpoint (path, ``{'model': ...}`` or flat mapping) into ``model``; returns the LoadReport."""
    state, source = read_state(state, source)
    clip_state, ignored, other = split_irra_state(state)
    if not clip_state:
        raise CheckpointError(f"{source}: no {IRRA_PREFIX}* keys: not an IRRA checkpoint (MODEL.FORMAT irra)")
    return _load_clip_state(model, clip_state, source, logger, ignored, other)


def load_clip(model, state, source="state dict", logger=None):
    """Copy a plain OpenAI / open_clip CLIP state dict into ``model``; returns the LoadReport."""
    state, source = read_state(state, source)
    return _load_clip_state(model, state, source, logger)


def _keys(state):
    return set(state) if isinstance(state, Mapping) else set()


def detect_irra(state):
    """IRRA: CLIP under ``base_model.`` (its image tower and token embedding)."""
    keys = _keys(state)
    return "base_model.visual.conv1.weight" in keys and "base_model.token_embedding.weight" in keys


def detect_clip(state):
    """A plain CLIP: ``visual.conv1.weight``, ``token_embedding.weight`` and ``text_projection`` at the top level."""
    keys = _keys(state)
    return {"visual.conv1.weight", "token_embedding.weight", "text_projection"} <= keys


IRRA_FORMAT = MODEL_FORMATS.register("irra")(
    ModelFormat(name="irra", architectures=tuple(ARCHITECTURES), build=build_irra, load=load_irra,
                detect=detect_irra, feature_doc=FEATURE_DOC)
)
CLIP_FORMAT = MODEL_FORMATS.register("clip")(
    ModelFormat(name="clip", architectures=tuple(ARCHITECTURES), build=build_clip, load=load_clip,
                detect=detect_clip, feature_doc=FEATURE_DOC)
)
