"""The Re-ID models of a privacy evaluation, identified from the protect run folder.

The authorization model f is the one the protect run used: its ``config.yaml`` names the checkpoint
(TEST.WEIGHT, checked against the digest in its ``results.json``) or an untrained model from
MODEL.INIT_SEED; ``ATTACK.AUTH_MODEL`` ('FORMAT:NAME:PATH') overrides it. Independent evaluators
(``ATTACK.EVAL_MODELS``) and the identity attacker's model g (``ATTACK.IDENTITY_MODEL``, default f)
use the TEST.EVAL_MODELS syntax and the protect run's input settings (INPUT.*).
"""
import json
import os

from configs import CONFIG_FILENAME, load_config
from engine.common.trial_weights import per_trial, trial_checkpoints, trial_checkpoints_identity
from modeling.authorization import build_authorization_model, build_eval_models
from utils.errors import CheckpointError, ConfigError
from utils.file_io import file_digest, weights_label

AUTHORIZATION = "authorization"
PROTECT_RESULTS = "results.json"


def protect_run_config(run_dir):
    """The protect run's merged config (``<run_dir>/config.yaml``); ``ConfigError`` when absent."""
    path = os.path.join(run_dir, CONFIG_FILENAME)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: the privacy evaluation needs the protect run's config to know its "
                          "authorization model; pass the protect_image.py output folder as --npy_path, or set "
                          "ATTACK.AUTH_MODEL and ATTACK.NUM_QUERY")
    return load_config(path)


def protect_run_results(run_dir):
    """The protect run's results.json as a dict ({} when absent)."""
    path = os.path.join(run_dir, PROTECT_RESULTS)
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def _sub_config(base, **values):
    cfg = base.clone()
    cfg.defrost()
    for key, value in values.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.freeze()
    return cfg


def authorization_model(attack_cfg, run_dir, device, logger=None):
    """(f, description): the protect run's authorization model, or ATTACK.AUTH_MODEL's."""
    entry = attack_cfg.ATTACK.AUTH_MODEL
    base = _protect_or_attack_config(run_dir, attack_cfg, needed=not entry)
    if entry:
        models = build_eval_models(_sub_config(base, **{"TEST.EVAL_MODELS": [entry]}), device, logger)
        (label, model), = models.items()
        return model, f"ATTACK.AUTH_MODEL {label}"
    weight = base.TEST.WEIGHT
    recorded = protect_run_results(run_dir).get("run", {}).get("checkpoint")
    if weight and per_trial(base):
        weight, description = _first_trial_checkpoint(base, recorded)
    elif weight:
        if not os.path.isfile(weight):
            raise CheckpointError(f"the protect run's checkpoint {weight} (TEST.WEIGHT in "
                                  f"{os.path.join(run_dir, CONFIG_FILENAME)}) is not there; expected it, or "
                                  "ATTACK.AUTH_MODEL 'FORMAT:NAME:PATH'")
        description = _same_weights(weight, recorded, weights_label(weight))
    else:
        description = f"UNTRAINED {base.MODEL.NAME}, random weights from MODEL.INIT_SEED={base.MODEL.INIT_SEED}"
    return build_authorization_model(base, weight, device, logger), description


def _same_weights(weight, recorded, digest):
    """``digest``, after checking it is what the protect run recorded (when it recorded one)."""
    if recorded and recorded != digest:
        raise CheckpointError(f"{weight} is not the checkpoint the protect run used ({recorded}, now {digest}); "
                              "expected the same file, or ATTACK.AUTH_MODEL to choose one")
    return digest


def _first_trial_checkpoint(base, recorded):
    """(path, description) of the first selected trial's model when TEST.WEIGHT holds ``{trial}``: that
    trial's train split gave the attack's training pairs and its test images the test pairs."""
    trial, path = next(iter(trial_checkpoints(base).items()))
    _same_weights(base.TEST.WEIGHT, recorded, trial_checkpoints_identity(base, file_digest))
    return path, f"trial {trial}: {weights_label(path)}"


def evaluator_models(attack_cfg, run_dir, authorization, device, logger=None):
    """{label: model}: the authorization model first, then each ATTACK.EVAL_MODELS entry."""
    base = _protect_or_attack_config(run_dir, attack_cfg, needed=False)
    extra = build_eval_models(_sub_config(base, **{"TEST.EVAL_MODELS": list(attack_cfg.ATTACK.EVAL_MODELS)}),
                              device, logger)
    return {AUTHORIZATION: authorization, **extra}


def identity_model(attack_cfg, run_dir, authorization, device, logger=None):
    """(g, label) for the identity attacker: ATTACK.IDENTITY_MODEL, or the authorization model."""
    entry = attack_cfg.ATTACK.IDENTITY_MODEL
    if not entry:
        return authorization, AUTHORIZATION
    base = _protect_or_attack_config(run_dir, attack_cfg, needed=False)
    (label, model), = build_eval_models(_sub_config(base, **{"TEST.EVAL_MODELS": [entry]}), device, logger).items()
    return model, label


def query_count(attack_cfg, run_dir, num_test_images):
    """Queries at the start of the test split: ATTACK.NUM_QUERY, else the protect run's results.json."""
    count = attack_cfg.ATTACK.NUM_QUERY
    source = "ATTACK.NUM_QUERY"
    if not count:
        count = protect_run_results(run_dir).get("run", {}).get("num_query")
        source = os.path.join(run_dir, PROTECT_RESULTS)
    if not count:
        raise ConfigError(f"the number of queries in the test split is unknown ({source} does not say it); "
                          "expected ATTACK.NUM_QUERY <queries> (the test split holds queries then gallery)")
    if not isinstance(count, int) or not 0 < count < num_test_images:
        raise ConfigError(f"{source}: {count!r} queries; expected an integer in [1, {num_test_images - 1}] "
                          f"(the test split holds {num_test_images} images)")
    return count


def privacy_information(attack_cfg, run_dir):
    """Whether the protect run (or ATTACK.AUTH_MODEL with ATTACK.NUM_QUERY) says enough for a privacy table."""
    has_run = os.path.isfile(os.path.join(run_dir, CONFIG_FILENAME))
    return has_run or bool(attack_cfg.ATTACK.AUTH_MODEL and attack_cfg.ATTACK.NUM_QUERY)


def scoring_config(attack_cfg, run_dir):
    """The config whose TEST.* (distance, normalisation, re-ranking) the leakage scores follow: the protect run's."""
    return _protect_or_attack_config(run_dir, attack_cfg, needed=False)


def _protect_or_attack_config(run_dir, attack_cfg, needed):
    if needed or os.path.isfile(os.path.join(run_dir, CONFIG_FILENAME)):
        return protect_run_config(run_dir)
    return attack_cfg
