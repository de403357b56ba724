"""The paper's tables as commands: comparison methods, ablations, parameter studies, backbones.

Each table is a list of points run like any protection run (engine through ``points.run_point``)
into ``<output>/runs/<point>`` (a point shared by two tables, such as the paper's PixelFade row,
is run once), then written as ``<output>/<table>.md``, ``.json`` and PNG figures. A
``TableSetting`` says on what: the paper's data set and checkpoints (``paper_setting``) or the
synthetic set with a small trained model (``small_setting``, 2 CPU cores, minutes).
"""
import dataclasses
import os
from dataclasses import dataclass

from configs.keys import get_key
from engine.attack.report import write_privacy_report
from engine.attack.run import run_recovery_attack
from engine.attack.settings import AttackSettings
from modeling import build_model, resolve_device
from utils.errors import CheckpointError, ConfigError
from utils.file_io import atomic_torch_save

from . import plots, sweep_grid, tables
from .demo import BACKBONE, SMALL_SCALE, data_root, ensure_data, trained_demo_checkpoint
from .points import Base, Point, folder_name, point_config, run_point

TABLES = ("table_methods", "table_ablation", "table_params", "table_backbones")
RUNS_DIR = "runs"
KEY_MODEL_DIR = "key_model"
KEY_MODEL_FILE = "Generator_weight_strong.pth"
PAPER_BACKBONE = "resnet50_nl"
# The parameter studies: each key swept alone around the paper's value (configs/AGW_baseline_*.yml).
PAPER_PARAM_GRID = {"PIXELFADE.EPSILON": [0.01, 0.03, 0.05, 0.1], "PIXELFADE.FADE_NUM_ITER": [1, 3, 5, 10],
                    "PIXELFADE.MAX_ITER": [25, 50, 100, 200], "PIXELFADE.BETA": [0.005, 0.01, 0.02]}
SMALL_PARAM_GRID = {"PIXELFADE.EPSILON": [0.03, 0.3, 1.0], "PIXELFADE.FADE_NUM_ITER": [1, 5],
                    "PIXELFADE.MAX_ITER": [10, 20], "PIXELFADE.BETA": [0.005, 0.01, 0.02]}
SMALL_ATTACK_EPOCHS = 3
# The paper's PixelFade settings (configs/AGW_baseline_market1501.yml).
PAPER_SETTINGS = ("PIXELFADE.BETA", 0.01, "PIXELFADE.BETA_TEMP", 0.04, "PIXELFADE.EPSILON", 0.03,
                  "PIXELFADE.FADE_NUM_ITER", 5, "PIXELFADE.WARMUP_ITER", 5, "PIXELFADE.MOMENTUM", 0.6)


@dataclass(frozen=True)
class TableSetting:
    """The data set, model and sizes every table of one invocation shares."""

    base: Base
    description: str
    # ((label, MODEL.NAME, checkpoint path), ...): the authorization models of table_backbones.
    backbones: tuple = ()
    param_grid: dict = dataclasses.field(default_factory=lambda: dict(PAPER_PARAM_GRID))
    avih_steps: int = 800
    key_model_epochs: int = 100
    key_model_ngf: int = 64


def paper_setting(dataset, data_root, ckpt_dir, device="auto", attackers=("reference", "strong"), backbones=(),
                  opts=(), show_progress=True):
    """The paper's configuration of ``dataset`` with the released (or trained) AGW checkpoint in ``ckpt_dir``.

    ``backbones``: ``NAME=PATH`` strings (agw family, e.g. trained by train_reid.py); default the AGW file.
    """
    checkpoint = os.path.join(ckpt_dir, f"{dataset}_{PAPER_BACKBONE}_model_120.pth")
    if not os.path.isfile(checkpoint):
        raise CheckpointError(f"--ckpt_dir {ckpt_dir}: missing {checkpoint}, the AGW model trained on {dataset} "
                              "(ckpt/README.md says where to get it; or train it: bash run.sh train_" + dataset + ")")
    config_file = os.path.join("configs", f"AGW_baseline_{dataset}.yml")
    if not os.path.isfile(config_file):
        raise ConfigError(f"--dataset {dataset}: no {config_file}; expected market1501, cuhk03 or msmt17")
    base_opts = ("DATASETS.NAMES", dataset, "DATASETS.ROOT_DIR", data_root, "TEST.WEIGHT", checkpoint,
                 "MODEL.DEVICE", device, "PIXELFADE.SAVE_IMAGE_NPY", True, *opts)
    base = Base(config_file, base_opts, False, tuple(attackers), show_progress)
    models = tuple(parse_backbone(item) for item in backbones) or ((PAPER_BACKBONE, PAPER_BACKBONE, checkpoint),)
    return TableSetting(base, f"{dataset}, AGW {PAPER_BACKBONE} {checkpoint}, the paper's settings", models)


def parse_backbone(item):
    """``"NAME=PATH"`` -> (label, MODEL.NAME, PATH)."""
    name, sep, path = str(item).partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--backbone {item!r}: expected MODEL.NAME=CHECKPOINT (e.g. resnet50=log/train/resnet50_model_120.pth)")
    if not os.path.isfile(path):
        raise ConfigError(f"--backbone {item!r}: checkpoint not found: {path}")
    return name, name, path


def untrained_checkpoint(name, path, cfg):
    """Write the random-init weights of backbone ``name`` (MODEL.INIT_SEED) once: a labelled stand-in model."""
    if not os.path.isfile(path):
        variant = cfg.clone()
        variant.defrost()
        variant.MODEL.NAME = name
        variant.MODEL.PRETRAIN_PATH = ""
        atomic_torch_save(build_model(variant).state_dict(), path)
    return path


def small_opts(root, checkpoint, device, scale, backbone):
    """The synthetic tables' settings: the demo's data and model, the paper's PixelFade values, tiny attacks."""
    return ("MODEL.NAME", backbone, "MODEL.DEVICE", device, "INPUT.IMG_SIZE", [scale.height, scale.width],
            "DATASETS.NAMES", "market1501", "DATASETS.ROOT_DIR", root, "TEST.WEIGHT", checkpoint,
            "DATALOADER.NUM_WORKERS", 0, "PIXELFADE.BATCH_SIZE", scale.batch_size,
            "PIXELFADE.MAX_ITER", scale.max_iter, *PAPER_SETTINGS, "PIXELFADE.BLUR_SIGMA", scale.blur_sigma,
            "PIXELFADE.MOSAIC_BLOCK", 4, "PIXELFADE.SAVE_IMAGE_NPY", True, "PIXELFADE.NUM_GRIDS", 1,
            "ATTACK.TOTAL_EPOCHS", scale.attack_epochs, "ATTACK.EVAL_EPOCHS", [], "ATTACK.NGF", scale.attack_ngf,
            "ATTACK.NUM_GRIDS", 1)


def small_setting(workdir, device="cpu", scale=None, attackers=("reference", "strong"), opts=(),
                  second_backbone="resnet50", attack_epochs=SMALL_ATTACK_EPOCHS, show_progress=False):
    """The synthetic set of the demo with its small TRAINED model (trained once into ``workdir``, then reused).

    table_backbones adds ``second_backbone`` with random weights (labelled untrained): one trained
    model is all the small scale can afford. The attacks (and AVIH's key model) train ``attack_epochs``.
    """
    scale = dataclasses.replace(scale or SMALL_SCALE, attack_epochs=attack_epochs)
    ensure_data(workdir, scale)
    checkpoint = trained_demo_checkpoint(workdir, scale, device)
    base = Base("", (*small_opts(data_root(workdir), checkpoint, device, scale, BACKBONE), *opts), False,
                tuple(attackers), show_progress)
    untrained = os.path.join(workdir, f"untrained_{second_backbone}.pth")
    untrained_checkpoint(second_backbone, untrained, point_config(base, Point("check", "check"), workdir))
    backbones = ((f"{BACKBONE} (trained)", BACKBONE, checkpoint), (f"{second_backbone} (untrained)", second_backbone,
                                                                     untrained))
    description = (f"synthetic Market-1501 ({scale.num_ids} identities, {scale.height}x{scale.width}), AGW-head "
                   f"{BACKBONE} trained by the demo ({scale.train_epochs} epochs), MAX_ITER {scale.max_iter}, "
                   f"attack {scale.attack_epochs} epochs, ngf {scale.attack_ngf}")
    grid = {key: [v for v in values if key != "PIXELFADE.MAX_ITER" or v <= scale.max_iter]
            for key, values in SMALL_PARAM_GRID.items()}
    grid = {key: values for key, values in grid.items() if values}
    return TableSetting(base, description, backbones, grid, avih_steps=scale.max_iter,
                        key_model_epochs=scale.attack_epochs, key_model_ngf=scale.attack_ngf)


def method_points(setting):
    """table_methods: PixelFade (both modes), today's filters, the literature presets and AVIH."""
    return [Point("pixelfade", "PixelFade, batch-level (the paper)"),
            Point("pixelfade_per_image", "PixelFade, per-image", (("PIXELFADE.MODE", "per_image"),)),
            Point("blur", "Gaussian blur (BLUR_SIGMA)", (("PIXELFADE.METHOD", "blur"),)),
            Point("mosaic", "mosaic (MOSAIC_BLOCK)", (("PIXELFADE.METHOD", "mosaic"),)),
            Point("noise", "additive noise (NOISE_STD)", (("PIXELFADE.METHOD", "noise"),)),
            Point("mosaic24_topleft", "mosaic 24, top-left fill (literature)", (("PIXELFADE.METHOD", "mosaic24_topleft"),)),
            Point("blur12_pil", "PIL blur radius 12 (literature)", (("PIXELFADE.METHOD", "blur12_pil"),)),
            Point("noise0.5_uint8", "noise 0.5, uint8 (literature)", (("PIXELFADE.METHOD", "noise0.5_uint8"),)),
            Point("avih", "AVIH (key model: ours)", (("PIXELFADE.METHOD", "avih"), ("AVIH.STEPS", setting.avih_steps),
                                                   ("AVIH.KEY_NGF", setting.key_model_ngf)))]


def ablation_points():
    """table_ablation: the paper's two operations switched off or changed one at a time."""
    return [Point("pixelfade", "PixelFade (the paper)"),
            Point("pixelfade_constraint_only", "constraint only (no replacement)", (("PIXELFADE.REPLACEMENT", "none"),)),
            Point("pixelfade_one_shot", "replacement in one shot", (("PIXELFADE.REPLACEMENT", "one_shot"),)),
            Point("pixelfade_no_momentum", "no momentum", (("PIXELFADE.MOMENTUM", 0.0),)),
            Point("pixelfade_per_image", "per-image constraint", (("PIXELFADE.MODE", "per_image"),))]


def param_points(setting, base_cfg):
    """table_params: each key of the grid swept alone; the point at the base's value is the shared paper run."""
    points = []
    for key, values in setting.param_grid.items():
        default = get_key(base_cfg, key)
        for value in values:
            name = "pixelfade" if value == default else "pixelfade_" + folder_name({key: value})
            label = f"{key.split('.')[-1]} {value}" + (" (base)" if value == default else "")
            points.append(Point(name, label, ((key, value),), {key: value}))
    return points


def backbone_points(setting):
    """table_backbones: protect for each model, score with it and (TEST.EVAL_MODELS) with every other one."""
    points = []
    for label, name, path in setting.backbones:
        others = [f"agw:{other}:{other_path}" for _, other, other_path in setting.backbones if other_path != path]
        overrides = (("MODEL.NAME", name), ("TEST.WEIGHT", path), ("TEST.EVAL_MODELS", others))
        points.append(Point(f"backbone_{folder_name({'name': name})}", label, overrides, {"backbone": label}))
    return points


def key_model_config(pixelfade_cfg, setting, output):
    """The config that trains AVIH's key model on the PixelFade run's pairs (tools/train_key_model.py's recipe)."""
    cfg = pixelfade_cfg.clone()
    cfg.defrost()
    cfg.ATTACK.GENERATOR = "resnet_9blocks"
    cfg.ATTACK.NGF = setting.key_model_ngf
    cfg.ATTACK.TOTAL_EPOCHS = setting.key_model_epochs
    cfg.freeze()
    AttackSettings.from_config(cfg)
    return cfg


class TableRun:
    """Plans and runs the points of one or more tables into ``output`` (validated before anything is written)."""

    def __init__(self, setting, output):
        self.setting = setting
        self.output = output
        self.runs_dir = os.path.join(output, RUNS_DIR)
        self.base_cfg = point_config(setting.base, Point("base", "base"), os.path.join(self.runs_dir, "pixelfade"))

    def folder(self, point):
        return os.path.join(self.runs_dir, point.name)

    def points(self, table):
        if table == "table_methods":
            return method_points(self.setting)
        if table == "table_ablation":
            return ablation_points()
        if table == "table_params":
            return param_points(self.setting, self.base_cfg)
        if table == "table_backbones":
            if not self.setting.backbones:
                raise ConfigError("table_backbones: no backbone given; expected --backbone NAME=CHECKPOINT")
            return backbone_points(self.setting)
        raise ConfigError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")

    def key_model_path(self):
        return os.path.join(self.output, KEY_MODEL_DIR, KEY_MODEL_FILE)

    def config(self, point, check_only=False):
        overrides = point.overrides
        if dict(overrides).get("PIXELFADE.METHOD") == "avih":
            if check_only and not os.path.isfile(self.key_model_path()):
                # The key model is trained on the PixelFade run first: check the rest now.
                overrides = (*overrides, ("PIXELFADE.METHOD", "pixelfade"))
            else:
                overrides = (*overrides, ("AVIH.KEY_MODEL", self.key_model_path()))
        return point_config(self.setting.base, dataclasses.replace(point, overrides=overrides), self.folder(point))

    def check(self, tables_):
        """Every point's config of every table, before anything runs."""
        for table in tables_:
            for point in self.points(table):
                self.config(point, check_only=True)
        if "table_methods" in tables_:
            key_model_config(self.base_cfg, self.setting, self.output)

    def ensure_key_model(self):
        """AVIH's key model: the strong attacker's resnet_9blocks on the PixelFade run's pairs (trained once)."""
        path = self.key_model_path()
        if not os.path.isfile(path):
            pixelfade = self.run(Point("pixelfade", "PixelFade"))
            cfg = key_model_config(self.config(Point("pixelfade", "PixelFade")), self.setting, self.output)
            run_recovery_attack(cfg, pixelfade, ["strong"], resolve_device(cfg.MODEL.DEVICE),
                                output=os.path.dirname(path), show_progress=self.setting.base.show_progress)
        return path

    def run(self, point):
        if dict(point.overrides).get("PIXELFADE.METHOD") == "avih":
            self.ensure_key_model()
        return run_point(self.config(point), self.setting.base)

    def table(self, table):
        """Run (or resume) the table's points and write its Markdown, JSON and figures; returns its rows."""
        points = self.points(table)
        for point in points:
            self.run(point)
        rows = [tables.run_row(self.folder(point), point.label, point.values) for point in points]
        meta = {"setting": self.setting.description, "config_file": self.setting.base.config_file,
                "opts": [str(item) for item in self.setting.base.opts], "attackers": list(self.setting.base.attackers)}
        title = f"{TITLES[table]} ({self.setting.description})"
        if table == "table_params":
            sweep_grid.write_outputs(rows, self.output, table, title, list(self.setting.param_grid), meta)
            return rows
        extra = ""
        if table == "table_backbones":
            extra = "Authorised mAP (%) of each protected run scored by every model (TEST.EVAL_MODELS):\n\n" + \
                tables.transfer_table(rows)
        tables.write_table(rows, self.output, table, title, extra_markdown=extra, meta=meta)
        plots.tradeoff_figure(rows, os.path.join(self.output, f"{table}_tradeoff.png"), TITLES[table])
        if table == "table_methods" and self.setting.base.attackers:
            write_privacy_report([self.folder(point) for point in points],
                                 os.path.join(self.output, "table_methods_privacy"),
                                 str(resolve_device(self.base_cfg.MODEL.DEVICE)))
        return rows


TITLES = {"table_methods": "Protection methods", "table_ablation": "Ablation of PixelFade's two operations",
          "table_params": "Parameter studies of PixelFade", "table_backbones": "Backbones of the agw family"}


def run_tables(setting, output, names):
    """Validate every table's points, then run each table; returns {table: rows}."""
    unknown = [name for name in names if name not in TABLES]
    if unknown or not names:
        raise ConfigError(f"tables {unknown or names}: expected names among {', '.join(TABLES)}")
    runner = TableRun(setting, output)
    runner.check(names)
    return {name: runner.table(name) for name in names}

