"""The one yacs tree that describes a run completely.

Key names follow the reference AGW/PixelFade configs so their YAML files and command-line
overrides keep working. Keys marked "reference compatibility" are set by the reference's YAML
files for the AGW trainer (losses, sampler, solver); this toolkit never trains the Re-ID model and
does not read them, but yacs rejects unknown keys, so they are accepted. INPUT.PROB, RE_PROB and
PADDING are read by the AGW training transforms (``data.transforms.build_train_transform``).
"""
import os

from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------
# Authorization Re-ID model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# "auto" picks CUDA when present, else CPU; or "cpu", "cuda", "cuda:1".
_C.MODEL.DEVICE = "auto"
# How TEST.WEIGHT is read: auto (TorchScript archives by their layout, state dicts by their keys;
# logged), agw (this toolkit's and the paper's Baseline family), torchreid, fastreid, torchscript,
# or module (MODEL.FACTORY builds the network). README, "Authorization models".
_C.MODEL.FORMAT = "auto"
# 'package.module:function' returning an nn.Module, for MODEL.FORMAT module.
_C.MODEL.FACTORY = ""
# fast-reid's stem max-pool, which its state dicts cannot tell: 'ceil' (3x3/2, ceil_mode, no
# padding: fast-reid v1.0.0 and later) or 'pad' (3x3/2, padding 1: up to v0.1.1).
_C.MODEL.FASTREID_MAXPOOL = "ceil"
# Head pooling of MODEL.FORMAT fastreid: auto (learnable GeM if the file has heads.pool_layer.p,
# else GeM p=3 for *_nl names, average otherwise), avg, gem, gem_p.
_C.MODEL.FASTREID_POOL = "auto"
# Backbone name in the registry of modeling/backbones (resnet50_nl, resnet50, resnet101, ...).
_C.MODEL.NAME = "resnet50_nl"
_C.MODEL.LAST_STRIDE = 1
# ImageNet weights of the backbone in torchvision format (only read when PRETRAIN_CHOICE is
# 'imagenet' and no Re-ID checkpoint is given); never downloaded.
_C.MODEL.PRETRAIN_PATH = ""
# 'imagenet': backbone from PRETRAIN_PATH (if set); 'self': whole model from TEST.WEIGHT.
_C.MODEL.PRETRAIN_CHOICE = "imagenet"
# Reference compatibility (AGW training losses).
_C.MODEL.CENTER_LOSS = "on"
_C.MODEL.CENTER_FEAT_DIM = 2048
_C.MODEL.WEIGHT_REGULARIZED_TRIPLET = "off"
# GeM pooling ('on') or plain global average pooling ('off').
_C.MODEL.GENERALIZED_MEAN_POOL = "on"
# Seed of the random initialisation when no checkpoint is given (the demo's untrained AGW).
_C.MODEL.INIT_SEED = 0
# MODEL.FORMAT agw_vi: the feature PixelFade constrains. bn = BNNeck output before L2 normalisation
# (default: the normalised ones are too small for EPSILON), bn_l2, pool (GeM), pool_l2.
_C.MODEL.VI_FEATURE = "bn"

# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# [height, width]
_C.INPUT.IMG_SIZE = [256, 128]
# Training augmentation (AGW recipe): horizontal flip, random erasing, padding + crop.
_C.INPUT.PROB = 0.5
_C.INPUT.RE_PROB = 0.5
_C.INPUT.PADDING = 10
# The input contract of the authorization model. PixelFade always optimises in the space
# normalised with PIXEL_MEAN/PIXEL_STD; MODEL_INPUT 'normalized' feeds that to the model (AGW,
# torchreid, fast-reid), 'pixels' feeds [0, PIXEL_RANGE] images to a model that normalises inside.
_C.INPUT.MODEL_INPUT = "normalized"
_C.INPUT.PIXEL_RANGE = 1.0
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]

# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# market1501 | cuhk03 | msmt17 | sysu_mm01 | regdb | image_folder (ROOT_DIR is then the folder itself)
_C.DATASETS.NAMES = "market1501"
# Root folder holding the data sets; the PIXELFADE_DATA environment variable overrides the default.
_C.DATASETS.ROOT_DIR = os.environ.get("PIXELFADE_DATA", "./datasets")
# CUHK03 new protocol: detected (default) or labeled boxes.
_C.DATASETS.CUHK03_LABELED = False
# Images that cannot be read (corrupt, truncated, empty): False stops before anything is written and
# names them all; True leaves them out of every split and lists them in the log and results.json.
_C.DATASETS.SKIP_UNREADABLE = False
# Visible-infrared trials to score (SYSU-MM01: 0..9, RegDB: 1..10); empty = all, averaged.
_C.DATASETS.TRIALS = []

# ---------------------------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Reference compatibility (the AGW trainer's identity-balanced sampler).
_C.DATALOADER.PK_SAMPLER = "on"
_C.DATALOADER.NUM_INSTANCE = 4

# ---------------------------------------------------------------------------------------------
# AGW training solver: reference compatibility
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER_NAME = "Adam"
_C.SOLVER.MAX_EPOCHS = 120
_C.SOLVER.BASE_LR = 3.5e-4
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.MARGIN = 0.3
_C.SOLVER.CENTER_LR = 0.5
_C.SOLVER.CENTER_LOSS_WEIGHT = 0.0005
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (40, 70)
_C.SOLVER.WARMUP_FACTOR = 0.01
_C.SOLVER.WARMUP_ITERS = 10
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 40
_C.SOLVER.LOG_PERIOD = 20
_C.SOLVER.EVAL_PERIOD = 60
_C.SOLVER.IMS_PER_BATCH = 64
# New (train_reid.py): seed of the training run - the sampler's batches, the augmentation and
# the center initialisation derive from it, epoch by epoch, so a resumed run repeats the epochs.
_C.SOLVER.SEED = 0
# New (train_reid.py): mixed precision on CUDA, 'off' | 'fp16' | 'bf16' (ignored on the CPU).
_C.SOLVER.AMP = "off"

# ---------------------------------------------------------------------------------------------
# Re-ID evaluation
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Images per forward pass when extracting evaluation features (protection batches use
# PIXELFADE.BATCH_SIZE).
_C.TEST.IMS_PER_BATCH = 128
# k-reciprocal re-ranking of the distance matrix: 'on' | 'off'.
_C.TEST.RE_RANKING = "off"
# Re-ID checkpoint (the --reid_ckpt_path flag sets it).
_C.TEST.WEIGHT = ""
# 'on': L2-normalise features (the reference); 'off': raw features.
_C.TEST.FEAT_NORM = "on"
# 'euclidean' (the reference) or 'cosine'.
_C.TEST.DISTANCE = "euclidean"
# Extra models that score the same protected/original test split (transfer): entries
# 'FORMAT:NAME:PATH' (NAME may be empty, e.g. 'torchscript::model.pt'); one table each in results.
_C.TEST.EVAL_MODELS = []
# Reference compatibility.
_C.TEST.EVALUATE_ONLY = "off"
_C.TEST.PARTIAL_REID = "off"

# ---------------------------------------------------------------------------------------------
# PixelFade protection (flags of protect_image.py map onto these)
# ---------------------------------------------------------------------------------------------
_C.PIXELFADE = CN()
# pixelfade | avih | blur | mosaic | noise (strengths below) | mosaic24_topleft | blur12_pil |
# noise0.5_uint8 (the literature's fixed presets on 8-bit pixels, SPEC-2 15.1)
_C.PIXELFADE.METHOD = "pixelfade"
_C.PIXELFADE.BATCH_SIZE = 20
_C.PIXELFADE.MAX_ITER = 100
# K: number of disjoint replacement stages.
_C.PIXELFADE.FADE_NUM_ITER = 5
_C.PIXELFADE.WARMUP_ITER = 5
# mu: gradient momentum.
_C.PIXELFADE.MOMENTUM = 0.6
# Step size while the constraint holds.
_C.PIXELFADE.BETA = 0.01
# Step size while it does not, and in the last 5 steps (0.02 for CUHK03).
_C.PIXELFADE.BETA_TEMP = 0.04
# Bound on the feature MSE.
_C.PIXELFADE.EPSILON = 0.03
# 'absolute': the test is mean((f(x_p) - f(x))^2) < EPSILON (the reference, for AGW's 2048-d
# BNNeck features); 'relative': < EPSILON * mean(f(x)^2), over the same elements, so EPSILON is a
# relative squared error that means the same for any model (README, "Choosing EPSILON").
_C.PIXELFADE.EPSILON_MODE = "absolute"
# The last TAIL_ITERS steps always use BETA_TEMP and never replace (the reference's fixed 5).
_C.PIXELFADE.TAIL_ITERS = 5
# Ablation of the paper's replacement: 'progressive' (the paper: stage step mod K, gated by the
# constraint), 'one_shot' (all K stages at step 0), 'none' (the constraint alone, no noise copied).
# No momentum is MOMENTUM 0; batch-level versus per-image constraint is MODE.
_C.PIXELFADE.REPLACEMENT = "progressive"
_C.PIXELFADE.SEED = 0
# 'reference': one constraint test per batch, masks shared by all batches (the paper's code);
# 'per_image': per-image test and step, noise and masks from a per-image seed.
_C.PIXELFADE.MODE = "reference"
# none | bf16 | fp16: autocast precision of the model's forward/backward.
_C.PIXELFADE.PRECISION = "none"
# channels_last memory layout: faster on some devices, but its convolutions round differently and
# the loop amplifies that; off reproduces the reference bit for bit.
_C.PIXELFADE.CHANNELS_LAST = False
# Strength of the baseline methods.
_C.PIXELFADE.BLUR_SIGMA = 8.0
_C.PIXELFADE.MOSAIC_BLOCK = 16
_C.PIXELFADE.NOISE_STD = 1.0
# Also protect the train split and save original/protected pairs for the recovery attack.
_C.PIXELFADE.SAVE_IMAGE_NPY = False
# How the train split is protected for the attack's pairs: 'identity_balanced' is the reference
# (its PK train loader: BATCH_SIZE / DATALOADER.NUM_INSTANCE identities x NUM_INSTANCE images, an
# identity's remainder dropped, random horizontal flip with INPUT.PROB); 'every_image' protects
# every train image once, un-flipped, in order.
_C.PIXELFADE.TRAIN_ORDER = "identity_balanced"
# Store protected images as lossless 8-bit PNG and score Re-ID on the reloaded images too.
_C.PIXELFADE.SAVE_PNG = False
# Number of leading batches per split drawn as original/protected grids.
_C.PIXELFADE.NUM_GRIDS = 5

# ---------------------------------------------------------------------------------------------
# AVIH comparison method (PIXELFADE.METHOD avih; Su et al., ICCV 2023, ported to Re-ID)
# ---------------------------------------------------------------------------------------------
_C.AVIH = CN()
# Key model: state dict of a resnet_9blocks generator that maps a normalised protected image to
# original pixels, e.g. Generator_weight_strong.pth of tools/train_key_model.py.
_C.AVIH.KEY_MODEL = ""
_C.AVIH.KEY_NGF = 64
_C.AVIH.STEPS = 800
# 'random': start from N(0, 1) pixels (AVIH's default); 'original': from the original image.
_C.AVIH.INIT = "random"
# Step size; times 0.85 after every 16th increase of the loss.
_C.AVIH.ALPHA = 0.01
_C.AVIH.MOMENTUM = 0.3
# Weights of the key-model term and of the local-variance texture term.
_C.AVIH.KEY_WEIGHT = 0.2
_C.AVIH.TEXTURE_WEIGHT = 0.001

# ---------------------------------------------------------------------------------------------
# Recovery attack
# ---------------------------------------------------------------------------------------------
_C.ATTACK = CN()
# unet_128 | unet_256 | resnet_6blocks | resnet_9blocks
_C.ATTACK.GENERATOR = "unet_128"
_C.ATTACK.NGF = 64
_C.ATTACK.OPTIMIZER = "adam"
_C.ATTACK.LR = 1e-3
_C.ATTACK.TOTAL_EPOCHS = 100
# Epoch indices (0-based) after which the test split is scored; the last epoch always is.
_C.ATTACK.EVAL_EPOCHS = [2]
# 'reference': L1 to the normalised original through a Tanh output (the paper);
# 'strong': L1 to the original in pixel space [0,1], no Tanh, since a Tanh cannot reach
# normalised targets outside [-1, 1] (README, What differs from the paper's code);
# 'identity': strong plus a feature loss through a Re-ID model (ATTACK.IDENTITY_*);
# 'inversion': white-box feature inversion through the authorization model (ATTACK.INVERSION_*).
_C.ATTACK.MODE = "reference"
_C.ATTACK.SHUFFLE = True
_C.ATTACK.SEED = 0
_C.ATTACK.NUM_GRIDS = 20
# Share of the train split's identities held out for validation (0 = none): the validation L1 per
# epoch picks the best epoch, whose weights are scored beside the last epoch's. -1 = each attacker's
# own protocol (engine.attack.settings.DEFAULT_VAL_FRACTION): 0 for 'reference', which trains on
# every train pair as the paper's recovery_attack.py does, 0.1 for 'strong' and 'identity'. A value
# >= 0 applies to every learned attacker (e.g. 0.1 gives the reference attacker a validation split).
_C.ATTACK.VAL_FRACTION = -1.0
# 'identity' attacker: weight of the feature loss ||g(G(x_p)) - g(x)||^2 / ||g(x)||^2 beside the L1, through
# the attacker-side Re-ID model g ('FORMAT:NAME:PATH' as in TEST.EVAL_MODELS; '' = the
# authorization model of the protect run).
_C.ATTACK.IDENTITY_WEIGHT = 1.0
_C.ATTACK.IDENTITY_MODEL = ""
# The authorization model f (leakage scoring, 'inversion' attacker): '' = the one the protect run
# folder's config.yaml names (TEST.WEIGHT, or random init from MODEL.INIT_SEED); or 'FORMAT:NAME:PATH'.
_C.ATTACK.AUTH_MODEL = ""
# Independent Re-ID models scoring identity leakage, 'FORMAT:NAME:PATH' as in TEST.EVAL_MODELS.
_C.ATTACK.EVAL_MODELS = []
# Queries at the start of the test split; 0 = read from the protect run's results.json.
_C.ATTACK.NUM_QUERY = 0
# 'inversion' attacker (white-box, no training): per protected query, N Adam steps on the pixels of x
# so that f(x) matches f(x_p); relative feature error + TV_WEIGHT * total variation (beta 2), pixels
# kept in [0, 1]; lr x1, x0.1, x0.01 over the first quarter, the middle half and the last quarter.
_C.ATTACK.INVERSION_STEPS = 200
_C.ATTACK.INVERSION_LR = 0.01
_C.ATTACK.INVERSION_TV = 0.1
# 'mean' (the train split's mean original image) | 'protected' (x_p itself)
_C.ATTACK.INVERSION_INIT = "mean"
# Local torchvision AlexNet file (alexnet-owt-7be5be79.pth) enabling LPIPS; '' = not computed.
_C.ATTACK.LPIPS_ALEXNET = ""

# ---------------------------------------------------------------------------------------------
# Text-to-image Re-ID: DATASETS.NAMES cuhk_pedes | icfg_pedes | rstpreid (captions query the images),
# MODEL.FORMAT irra | clip (MODEL.NAME ViT-B-16 or clip_tiny; a checkpoint's shapes override it). IRRA's
# input is INPUT.IMG_SIZE [384, 128] with CLIP's INPUT.PIXEL_MEAN [0.48145466, 0.4578275, 0.40821073]
# and PIXEL_STD [0.26862954, 0.26130258, 0.27577711] (data.transforms.build_clip_eval_transform).
# protect_image.py makes these, and PIXELFADE.EPSILON_MODE relative with EPSILON 0.06, the defaults of
# these data sets and formats, key by key unless set (engine.protect.text_image.CLIP_INPUT_DEFAULTS).
# ---------------------------------------------------------------------------------------------
_C.TEXT = CN()
# Captions per forward pass of the CLIP text tower.
_C.TEXT.CAPTION_BATCH = 256
# Also score image-to-text (each test image ranks the captions, the transposed similarity) in a protection run.
_C.TEXT.IMAGE_TO_TEXT = False

# ---------------------------------------------------------------------------------------------
# Cross-modality AGW training (tools/train_cross_modality.py; DATASETS.NAMES sysu_mm01 | regdb; MODEL.NAME
# resnet50_nl | resnet18_nl; MODEL.PRETRAIN_PATH: torchvision ImageNet ResNet weights, else random init).
# Defaults: mangye16/Cross-Modal-Re-ID-baseline train.py (epochs 0..80, lr x (e+1)/10 for e < 10, x0.1
# at 20 and 50, backbone at 0.1 x LR; P=8 identities x 4 visible + 4 thermal; Pad 10 + crop 288 x 144).
# ---------------------------------------------------------------------------------------------
_C.VI_TRAIN = CN()
_C.VI_TRAIN.LR = 0.1
_C.VI_TRAIN.MAX_EPOCHS = 81
_C.VI_TRAIN.WARMUP_EPOCHS = 10
_C.VI_TRAIN.STEPS = [20, 50]
_C.VI_TRAIN.GAMMA = 0.1
_C.VI_TRAIN.IDS_PER_BATCH = 8
_C.VI_TRAIN.NUM_POS = 4
_C.VI_TRAIN.IMG_SIZE = [288, 144]
_C.VI_TRAIN.PADDING = 10
# Evaluate after epoch e when e > 0 and e % EVAL_PERIOD == 0 (and after the last): DATASETS.TRIALS of
# EVAL_PROTOCOL ('' = all_search for SYSU-MM01, visible_to_thermal for RegDB; empty TRIALS = trial 0 /
# trial 1, the reference's). RegDB trains on its one selected trial.
_C.VI_TRAIN.EVAL_PERIOD = 2
_C.VI_TRAIN.EVAL_PROTOCOL = ""
_C.VI_TRAIN.TEST_BATCH = 64
_C.VI_TRAIN.SEED = 0

# ---------------------------------------------------------------------------------------------
# System: how a run uses the machine. Never part of a run's fingerprint: a run resumes with any value.
# ---------------------------------------------------------------------------------------------
_C.SYSTEM = CN()
# torch's CPU threads per process (torch.set_num_threads, --threads); 0: OMP_NUM_THREADS when set,
# else the CPUs this process may use (affinity mask and cgroup quota, utils/cpus.py) shared out over
# the processes of a multi-process run.
_C.SYSTEM.THREADS = 0

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = ""
# Reference compatibility (seeds here: MODEL.INIT_SEED, PIXELFADE.SEED, ATTACK.SEED).
_C.SEED = 666


def get_default_config():
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
