"""CLIP / IRRA model formats and CLIP's caption tokenizer (tiny CLIP on small images)."""
import gzip
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD
from PIL import Image
from torchvision import transforms as T

from configs import get_default_config
from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, build_clip_eval_transform, normalize
from modeling import CheckpointError, build_authorization_model
from modeling.authorization import detect_format
from modeling.clip_reid import (
    ARCHITECTURES,
    CaptionTokenizer,
    build_open_clip,
    caption_tokenizer,
    infer_sizes,
    load_irra,
)
from utils.errors import ConfigError

TINY = ARCHITECTURES["clip_tiny"]
SIZE = (64, 32)
SOT, EOT = 49406, 49407
# IRRA's training heads (SPEC-3), top-level beside base_model.*: the checkpoint has them, inference ignores them.
IRRA_HEAD_KEYS = ("classifier.weight", "classifier.bias", "cross_attn.in_proj_weight", "cross_attn.in_proj_bias",
                  "cross_attn.out_proj.weight", "cross_attn.out_proj.bias",
                  "cross_modal_transformer.resblocks.0.attn.in_proj_weight", "ln_pre_t.weight", "ln_pre_t.bias",
                  "ln_pre_i.weight", "ln_pre_i.bias", "ln_post.weight", "ln_post.bias", "mlm_head.dense.weight",
                  "mlm_head.fc.weight")
# The CLIP groups IRRA keeps under base_model. (SPEC-3 section 5).
IRRA_BASE_GROUPS = ("visual.", "token_embedding.weight", "positional_embedding", "transformer.", "ln_final.",
                    "text_projection")


def clip_cfg(fmt="irra", name="clip_tiny", size=SIZE, mean=CLIP_PIXEL_MEAN, std=CLIP_PIXEL_STD):
    cfg = get_default_config()
    cfg.MODEL.FORMAT, cfg.MODEL.NAME = fmt, name
    cfg.INPUT.IMG_SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = list(size), list(mean), list(std)
    return cfg


@pytest.fixture(scope="module")
def reference():
    """An open_clip CLIP with random weights: the model whose own forward the loaded copies must match."""
    torch.manual_seed(1)
    return build_open_clip(TINY, SIZE).eval()


def irra_state(reference, half=False):
    """IRRA's ``best.pth`` content for the reference weights: base_model.* (no logit_scale) plus training heads."""
    state = {f"base_model.{key}": value.clone() for key, value in reference.state_dict().items()
             if key != "logit_scale"}
    if half:  # IRRA's convert_weights: linear, conv and attention weights in fp16
        state = {key: value.half() if value.dim() == 2 or "conv1" in key else value for key, value in state.items()}
    state.update({key: torch.randn(4, 64) for key in IRRA_HEAD_KEYS})
    return {"model": state, "optimizer": {"state": {}}, "epoch": 60}


def save(tmp_path, content, name="best.pth"):
    path = os.path.join(tmp_path, name)
    torch.save(content, path)
    return path


def images(count=3, seed=0):
    return torch.randn(count, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------
def bpe_lines():
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe()) as handle:
        return handle.read().decode("utf-8").split("\n")


def test_caption_ids_worked_out_from_the_vocabulary_file():
    # Ids 0-255 are the byte symbols ('!'..'~' first, so 'a' is 97 - 33 = 64 and '.' is 13), 256-511 the
    # same with '</w>', then one id per merge: line 1 + (id - 512) of the file merges into that token.
    lines = bpe_lines()
    assert "".join(lines[1 + 2308 - 512].split()) == "woman</w>"
    assert "".join(lines[1 + 3309 - 512].split()) == "wearing</w>"
    assert "".join(lines[1 + 736 - 512].split()) == "red</w>"
    assert "".join(lines[1 + 2523 - 512].split()) == "shirt</w>"
    ids = caption_tokenizer("clip").tokenize(["A woman wearing a red shirt."])[0]
    expected = [SOT, 256 + 64, 2308, 3309, 256 + 64, 736, 2523, 256 + 13, EOT]
    assert ids[:9].tolist() == expected and ids[9:].eq(0).all() and ids.shape == (77,)


def test_cleaning_case_whitespace_and_html():
    tokenizer = caption_tokenizer("irra")
    assert tokenizer.encode("  A\tWOMAN \n\n wearing &amp;  ") == tokenizer.encode("a woman wearing &")


def test_truncation_keeps_eot_last():
    ids = caption_tokenizer("irra").tokenize([" ".join(["red"] * 100)])[0]
    assert ids[0] == SOT and ids[-1] == EOT and ids[1:-1].eq(736).all()


def test_irra_vocabulary_changes_only_the_last_merge_token():
    clip, irra = CaptionTokenizer("clip"), CaptionTokenizer("irra")
    last = "".join(bpe_lines()[48894].split())
    assert last == "jekyll</w>" and clip.encoder[last] == 49405 and last not in irra.encoder
    assert irra.encoder["<|mask|>"] == 49405 and "<|mask|>" not in clip.encoder
    assert {token: index for token, index in clip.encoder.items() if token != last} == \
        {token: index for token, index in irra.encoder.items() if token != "<|mask|>"}
    caption = "The man wears a black jacket, blue jeans and white sneakers; he carries a backpack."
    assert clip.tokenize([caption]).equal(irra.tokenize([caption]))
    assert clip.encode("jekyll") == [49405]
    assert irra.encode("jekyll") == [irra.encoder["jeky"], irra.encoder["ll</w>"]]
    assert irra.encode("a <|mask|> shirt") == [320, 49405, 2523]


# ------------------------------------------------------------------------------------------------
# Loading and features
# ------------------------------------------------------------------------------------------------
def test_irra_checkpoint_loads_ignoring_only_its_heads(tmp_path, reference, caplog):
    path = save(tmp_path, irra_state(reference))
    model = build_authorization_model(clip_cfg("auto"), path, "cpu")
    assert detect_format(torch.load(path)["model"], path) == "irra"
    report = load_irra(build_authorization_model(clip_cfg("irra"), "", "cpu"), path)
    assert sorted(report.ignored) == sorted(IRRA_HEAD_KEYS)
    assert report.kept_initial == ["logit_scale"] and report.ok
    assert all(key.startswith(IRRA_BASE_GROUPS) for key in report.loaded)
    assert {group for group in IRRA_BASE_GROUPS if any(k.startswith(group) for k in report.loaded)} == \
        set(IRRA_BASE_GROUPS)
    x = images()
    with torch.no_grad():
        assert torch.allclose(model(x), reference.encode_image(x, normalize=False), rtol=0, atol=1e-5)
    assert model.feature_dim == 64 and model(x).shape == (3, 64)
    pixels = x.clone().requires_grad_(True)
    model(pixels).pow(2).sum().backward()  # PixelFade's gradient reaches the pixels, never the frozen weights
    assert pixels.grad.abs().sum() > 0 and all(parameter.grad is None for parameter in model.parameters())


def test_features_equal_open_clips_own_forward_and_the_class_token(reference):
    model = load_irra_into_tiny(reference)
    x = images()
    with torch.no_grad():
        features = model(x)
        visual = reference.visual
        tokens = visual.conv1(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([visual.class_embedding.expand(3, 1, -1), tokens], dim=1) + visual.positional_embedding
        tokens = visual.transformer(visual.ln_pre(tokens))
        by_hand = visual.ln_post(tokens[:, 0]) @ visual.proj
    assert torch.allclose(features, by_hand, atol=1e-5)
    assert not torch.allclose(features.norm(dim=1), torch.ones(3))  # not normalised
    captions = ["a woman in a red shirt", "a tall man with a black backpack and grey trousers", "x"]
    ids = caption_tokenizer("irra").tokenize(captions)
    with torch.no_grad():
        expected = reference.encode_text(ids, normalize=False)
        hidden = reference.ln_final(reference.transformer(reference.token_embedding(ids) +
                                                          reference.positional_embedding,
                                                          attn_mask=reference.attn_mask))
        eot_positions = [len(caption_tokenizer("irra").encode(c)) + 1 for c in captions]
        by_hand = hidden[torch.arange(3), eot_positions] @ reference.text_projection
    assert torch.allclose(model.encode_captions(captions, batch_size=2), expected, rtol=0, atol=1e-5)
    assert torch.allclose(expected, by_hand, atol=1e-5)


def load_irra_into_tiny(reference, state=None, cfg=None):
    model = build_authorization_model(cfg or clip_cfg("irra"), "", "cpu")
    load_irra(model, state or irra_state(reference))
    return model


def test_fp16_tensors_load_as_fp32_and_irra_top_level_ln_post_is_not_the_image_tower(reference):
    state = irra_state(reference, half=True)
    model = load_irra_into_tiny(reference, state)
    weight = state["model"]["base_model.visual.proj"]
    assert weight.dtype == torch.float16
    assert model.clip.visual.proj.dtype == torch.float32 and torch.equal(model.clip.visual.proj, weight.float())
    state["model"]["ln_post.weight"] = torch.zeros(64)
    x = images()
    same = load_irra_into_tiny(reference, state)
    with torch.no_grad():
        assert torch.equal(model(x), same(x)) and model(x).dtype == torch.float32
    state["model"]["base_model.visual.ln_post.weight"] = torch.zeros(64)
    with torch.no_grad():
        assert not torch.equal(model(x), load_irra_into_tiny(reference, state)(x))


def test_plain_clip_state_dict_and_another_input_normalisation(tmp_path, reference):
    path = save(tmp_path, reference.state_dict(), "clip.pt")
    cfg = clip_cfg("auto", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    model = build_authorization_model(cfg, path, "cpu")
    assert detect_format(reference.state_dict(), path) == "clip" and model.vocabulary == "clip"
    pixels = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference.encode_image(normalize(pixels, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD))
        assert torch.allclose(model(normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)), expected, atol=1e-5)


def test_sizes_come_from_the_file(tmp_path):
    sizes = {**TINY, "embed_dim": 32, "vision_width": 128, "vision_layers": 3, "text_width": 128, "text_layers": 1,
             "context_length": 40, "vision_mlp_ratio": 2.0}
    torch.manual_seed(2)
    other = build_open_clip(sizes, (48, 32)).eval()
    path = save(tmp_path, other.state_dict(), "other.pt")
    model = build_authorization_model(clip_cfg("clip", size=(48, 32)), path, "cpu")
    assert infer_sizes(other.state_dict(), path) == (sizes, 6)
    assert model.feature_dim == 32 and model.tokenizer.context_length == 40
    assert not any(parameter.requires_grad for parameter in model.parameters())
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), other.encode_image(x), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match=r"positional embeddings for 6 patches of 16 pixels, which INPUT.IMG_SIZE "
                                          r"\[64, 32\] does not give; set INPUT.IMG_SIZE to one that does \(e.g. "
                                          r"\[48, 32\], \[32, 48\], \[96, 16\], \[16, 96\]"):
        build_authorization_model(clip_cfg("clip", size=(64, 32)), path, "cpu")


def test_vit_b16_architecture_matches_open_clips_configuration():
    import open_clip
    from open_clip.model import CLIP

    config = open_clip.get_model_config("ViT-B-16")
    config["vision_cfg"]["image_size"] = (384, 128)
    with torch.device("meta"):
        expected = CLIP(**config, quick_gelu=True).state_dict()
        ours = build_open_clip(ARCHITECTURES["ViT-B-16"], (384, 128)).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in expected.items()}
    assert ours["visual.positional_embedding"].shape == (193, 768)
    assert infer_sizes(ours, "vit") == (ARCHITECTURES["ViT-B-16"], 192)


def test_bad_checkpoints_and_settings(tmp_path, reference):
    content = irra_state(reference)
    content["model"]["extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"best.pth: weights do not fit a CLIP of the file's sizes: "
                                              r"extra_head: 1 unexpected$"):
        build_authorization_model(clip_cfg("irra"), save(tmp_path, content), "cpu")
    content = irra_state(reference)
    del content["model"]["base_model.ln_final.weight"]
    with pytest.raises(CheckpointError, match="not a ViT CLIP state dict: it has no ln_final.weight"):
        build_authorization_model(clip_cfg("irra"), save(tmp_path, content), "cpu")
    content = irra_state(reference)
    del content["model"]["base_model.transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match="transformer: 1 missing"):
        build_authorization_model(clip_cfg("irra"), save(tmp_path, content), "cpu")
    with pytest.raises(CheckpointError, match="no base_model.\\* keys: not an IRRA checkpoint"):
        build_authorization_model(clip_cfg("irra"), save(tmp_path, reference.state_dict()), "cpu")
    resnet = dict(reference.state_dict(), **{"visual.attnpool.c_proj.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="a ResNet CLIP image tower"):
        build_authorization_model(clip_cfg("clip"), save(tmp_path, resnet), "cpu")
    with pytest.raises(ConfigError, match="MODEL.NAME 'resnet50_nl' is not a CLIP architecture"):
        build_authorization_model(clip_cfg("irra", name="resnet50_nl"), "", "cpu")
    with pytest.raises(ConfigError, match=r"INPUT.IMG_SIZE \[60, 32\] must be multiples of the CLIP patch size 16"):
        build_authorization_model(clip_cfg("clip", size=(60, 32)), "", "cpu")
    cfg = clip_cfg("clip")
    cfg.TEXT.CAPTION_BATCH = 0
    with pytest.raises(ConfigError, match="TEXT.CAPTION_BATCH must be >= 1, got 0"):
        build_authorization_model(cfg, "", "cpu")


def test_load_report_is_logged(tmp_path, reference, caplog):
    caplog.set_level(logging.INFO)
    build_authorization_model(clip_cfg("irra"), save(tmp_path, irra_state(reference)), "cpu",
                              logging.getLogger("t2i"))
    assert "ignored 15 (classifier, cross_attn, cross_modal_transformer, ln_post, ln_pre_i, ln_pre_t, mlm_head)" \
        in caplog.text
    assert "logit_scale: 1 kept at initialisation" in caplog.text


def test_clip_eval_transform_is_irras_test_transform():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 20, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize(SIZE), T.ToTensor(), T.Normalize(CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)])
    assert torch.equal(build_clip_eval_transform(SIZE)(image), reference(image))


def test_nothing_touches_the_network():
    """Importing open_clip, building models and tokenising with every socket call refused (a fresh process)."""
    script = (
        "import socket\n"
        "attempts = []\n"
        "def refuse(*args, **kwargs):\n"
        "    attempts.append(args)\n"
        "    raise OSError('network used')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.getaddrinfo = socket.create_connection = refuse\n"
        "import torch\n"
        "from configs import get_default_config\n"
        "from modeling import build_authorization_model\n"
        "cfg = get_default_config()\n"
        "cfg.MODEL.FORMAT, cfg.MODEL.NAME, cfg.INPUT.IMG_SIZE = 'irra', 'clip_tiny', [32, 16]\n"
        "model = build_authorization_model(cfg, '', 'cpu')\n"
        "model(torch.zeros(1, 3, 32, 16)); model.encode_captions(['a man in red'])\n"
        "import open_clip\n"
        "with torch.device('meta'):\n"
        "    open_clip.create_model('ViT-B-16', pretrained=None, force_quick_gelu=True, force_image_size=(384, 128),\n"
        "                           device='meta')\n"
        "assert not attempts, attempts\n"
        "print('offline ok')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=os.getcwd(), env=env,
                            timeout=300)
    assert result.returncode == 0 and "offline ok" in result.stdout, result.stderr[-2000:]
