"""Visible-infrared data sets (SYSU-MM01, RegDB) in a protection run: models per split, input defaults, scores.

A run plans one split per modality (``data.splits.plan_cross_modality``); each is protected by a
``Protector`` on ``VisibleInfraredAuthorization(net, modality, MODEL.VI_FEATURE)``, the stem of its
own sensor. With ``{trial}`` in TEST.WEIGHT every trial has its own checkpoint, splits and scores.
Retrieval is always scored as the reference scores it, whatever feature PixelFade constrains: the
dot product of the L2-normalised BNNeck features of the original and the protected images, from the
same network and stem (with MODEL.VI_FEATURE pool/pool_l2 they are extracted per batch beside the
constrained ones and stored in the batch record). Each protocol is scored per trial in the four
modes, then averaged over the trials.
"""
from typing import NamedTuple

import torch

from data.datasets.visible_infrared import MODALITIES
from data.img_npy import write_modalities
from data.splits import CROSS_MODALITY_DATASETS, TRIAL_FIELD
from data.transforms import AGW_VI_IMG_SIZE, build_eval_transform, build_vi_eval_transform
from engine.common.trial_weights import per_trial, trial_checkpoints, trial_numbers
from engine.protect.results import RECORD_STATS, summarize_statistics
from evaluation.cross_modality import METRIC_KEYS, score_protocol
from evaluation.reid import PROTECTION_MODES
from modeling.agw_vi import VisibleInfraredAuthorization
from utils.errors import CheckpointError

# Where the features scored as the reference scores them are: the constrained ones when they are the BNNeck
# output (bn, bn_l2: the L2 normalisation of scoring makes them equal), else those of a BNNeck model per batch.
EVAL_FEATURE_KEYS = ("eval0_original_features", "eval0_protected_features")
OWN_FEATURE_KEYS = ("original_features", "protected_features")


def is_cross_modality(cfg):
    return cfg.DATASETS.NAMES in CROSS_MODALITY_DATASETS


def apply_input_defaults(cfg, user_keys):
    """The agw_vi input contract (288 x 144) on a defrosted ``cfg`` of a visible-infrared run, unless
    the user set INPUT.IMG_SIZE (``user_keys``: the config keys given in a file, override or flag)."""
    if is_cross_modality(cfg) and "INPUT.IMG_SIZE" not in user_keys:
        cfg.INPUT.IMG_SIZE = list(AGW_VI_IMG_SIZE)


def validate(cfg, check):
    """Settings a visible-infrared run needs; ``check`` is protect_settings' checker."""
    if per_trial(cfg) and not is_cross_modality(cfg):
        check.fail("TEST.WEIGHT", f"a path without {TRIAL_FIELD} (one checkpoint per trial needs sysu_mm01 or regdb)")
    if not is_cross_modality(cfg):
        return
    check.choice("MODEL.FORMAT", ("auto", "agw_vi"))
    check.choice("INPUT.MODEL_INPUT", ("normalized",))
    if cfg.TEST.EVAL_MODELS:
        check.fail("TEST.EVAL_MODELS", "empty with a visible-infrared data set (one stem per modality)")
    check.choice("TEST.RE_RANKING", ("off",))


def _require_two_stems(model, source):
    if not isinstance(model, VisibleInfraredAuthorization):
        raise CheckpointError(
            f"{source}: a visible-infrared data set needs an agw_vi model (visible and thermal stems, "
            f"MODEL.FORMAT agw_vi), got {type(model).__name__}"
        )
    return model


def split_models(cfg, plan, device, load):
    """``(model, {split: model})``: the authorization model of each split of ``plan``.

    ``load(cfg, device, path)`` builds one model (``path`` None: TEST.WEIGHT). Single-modality runs
    use one model for every split; visible-infrared ones the stem of the split's modality, on the
    network of the split's trial with per-trial checkpoints. ``model`` is the first split's.
    """
    if not is_cross_modality(cfg):
        model = load(cfg, device)
        return model, {split: model for split in plan.splits}
    paths = trial_checkpoints(cfg) if per_trial(cfg) else {None: None}
    networks = {}
    models = {}
    for split, split_plan in plan.splits.items():
        if split_plan.trial not in networks:
            path = paths[split_plan.trial]
            networks[split_plan.trial] = _require_two_stems(load(cfg, device, path), path or cfg.TEST.WEIGHT)
        models[split] = networks[split_plan.trial].for_modality(split_plan.modality)
    return next(iter(models.values())), models


def split_transform(cfg):
    """The input transform: the reference's AGW cross-modality test transform for visible-infrared runs."""
    if is_cross_modality(cfg):
        return build_vi_eval_transform(cfg.INPUT.IMG_SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
    return build_eval_transform(cfg)


def scores_on_bn(cfg):
    return cfg.MODEL.VI_FEATURE in ("bn", "bn_l2")


def scoring_models(cfg, models):
    """``{split: [BNNeck model]}`` where the constrained feature is not the BNNeck one (pool, pool_l2), else {}."""
    if not is_cross_modality(cfg) or scores_on_bn(cfg):
        return {}
    return {split: [VisibleInfraredAuthorization(model.net, model.modality, "bn")] for split, model in models.items()}


def scoring_keys(cfg):
    return OWN_FEATURE_KEYS if scores_on_bn(cfg) else EVAL_FEATURE_KEYS


def _features_by_trial(cfg, plan, gathered):
    """``{trial or None: {"original": {path: vector}, "protected": {path: vector}}}`` of the test splits."""
    original_key, protected_key = scoring_keys(cfg)
    features = {}
    for split, split_plan in plan.splits.items():
        if not split.startswith("test"):
            continue
        sources = features.setdefault(split_plan.trial, {"original": {}, "protected": {}})
        rows = gathered[split]
        for index, record in enumerate(split_plan.records):
            sources["original"][record.path] = rows[original_key][index].double().numpy()
            sources["protected"][record.path] = rows[protected_key][index].double().numpy()
    return features


def _mean(entries):
    keys = [key for key in METRIC_KEYS if key in entries[0]]
    mean = {key: float(sum(entry[key] for entry in entries) / len(entries)) for key in keys}
    mean["short_list"] = any(entry["short_list"] for entry in entries)
    return mean


def score_cross_modality(cfg, plan, gathered):
    """``reid`` (the first protocol), ``reid_protocols[protocol][mode]`` (means over trials),
    ``reid_trials[protocol][mode]`` (per trial) and ``protection_modalities`` of a visible-infrared run."""
    features = _features_by_trial(cfg, plan, gathered)
    protocols, trials_out = {}, {}
    for protocol, trials in plan.protocols.items():
        protocols[protocol], trials_out[protocol] = {}, {}
        for mode, (query_source, gallery_source) in PROTECTION_MODES.items():
            entries = []
            for trial in trials:
                sources = features[trial.trial if per_trial(cfg) else None]
                scored = score_protocol(plan.metric, [trial], sources[query_source], sources[gallery_source])
                entries.append(scored["trials"][0])
            protocols[protocol][mode] = _mean(entries)
            trials_out[protocol][mode] = entries
    primary = next(iter(protocols))
    return {
        "reid": protocols[primary],
        "reid_primary_protocol": primary,
        "reid_protocols": protocols,
        "reid_trials": trials_out,
        "protection_modalities": protection_by_modality(cfg, plan, gathered),
    }


def protection_by_modality(cfg, plan, gathered):
    """Protection statistics of the test images per modality and over both (``overall``)."""
    groups = {modality: [] for modality in MODALITIES}
    for split, split_plan in plan.splits.items():
        if split.startswith("test"):
            groups[split_plan.modality].append(gathered[split])
    groups["overall"] = groups[MODALITIES[0]] + groups[MODALITIES[1]]
    keys = RECORD_STATS + ("original_features",)
    return {
        name: summarize_statistics({key: torch.cat([part[key] for part in parts]) for key in keys},
                                   cfg.PIXELFADE.EPSILON, cfg.PIXELFADE.EPSILON_MODE)
        for name, parts in groups.items() if parts
    }


class PairSelection(NamedTuple):
    """Which test images of a visible-infrared run get ``img_npy`` pairs: those of ``trial`` only.

    The attack trains on the train split of one trial (RegDB: the first selected trial's, since each
    trial is another train/test split of the identities; SYSU-MM01 has one train split) and must be
    tested on images it never trained on, each once: the same trial's query and gallery images. With
    one checkpoint per trial, the other trials' test splits write no pairs (they would repeat images).
    """

    trial: int
    test_paths: frozenset
    batch_size: int
    num_query: int


def pair_selection(cfg, plan):
    """The :class:`PairSelection` of a visible-infrared run: the first selected trial's test images.

    ``num_query``: the test pairs that come first as queries (the first protocol's query modality).
    """
    trial = trial_numbers(cfg)[0]
    trials = [t for protocol in plan.protocols.values() for t in protocol if t.trial == trial]
    paths = frozenset(r.path for t in trials for group in (t.query, t.gallery) for r in group)
    test = [sp for split, sp in plan.splits.items() if split.startswith("test") and sp.trial in (None, trial)]
    num_query = sum(r.path in paths for sp in test if sp.modality == test[0].modality for r in sp.records)
    return PairSelection(trial, paths, cfg.PIXELFADE.BATCH_SIZE, num_query)


def _kept_rows(split_plan, selection):
    """Per record of a split, whether its pair is written (None: every record's, as for train splits)."""
    if selection is None or split_plan.pairs_as[0] != "test":
        return None
    if split_plan.trial not in (None, selection.trial):
        return [False] * len(split_plan.records)
    return [record.path in selection.test_paths for record in split_plan.records]


class PairSplitStore:
    """A run store whose ``img_npy`` pairs of one visible-infrared split go to the reference's split name
    (``train``/``test``) from a batch offset, so the attack reads both modalities' pairs unchanged; beside
    each batch, its images' modality (``data.img_npy.write_modalities``). With a :class:`PairSelection`,
    only the selected test images are written (a batch left empty writes nothing)."""

    def __init__(self, store, split_plan, selection=None):
        self._store = store
        self._split, self._offset = split_plan.pairs_as
        self._modality = split_plan.modality
        self._kept = _kept_rows(split_plan, selection)
        self._batch_size = selection.batch_size if selection is not None else None

    def save_pairs(self, split, batch_index, original, protected, pids, camids):
        arrays = (original, protected, pids, camids)
        if self._kept is not None:
            start = batch_index * self._batch_size
            rows = [row for row in range(len(pids)) if self._kept[start + row]]
            if not rows:
                return
            if len(rows) < len(pids):
                arrays = tuple(None if array is None else array[rows] for array in arrays)
        index = self._offset + batch_index
        write_modalities(self._store.npy_dir, self._split, index, [self._modality] * len(arrays[2]))
        self._store.save_pairs(self._split, index, *arrays)

    def __getattr__(self, name):
        return getattr(self._store, name)


def split_store(store, split_plan, selection=None):
    """The store a split's handlers write through: pairs of visible-infrared splits renamed (and selected)."""
    return PairSplitStore(store, split_plan, selection) if split_plan.pairs_as else store
