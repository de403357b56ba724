"""configs/cli.py (flag table, parser builder, flags -> config) and the shared endings in utils/cli.py."""
import argparse
import os
import subprocess
import sys

import pytest
from helpers import REPO

from configs.cli import Flag, FlagTable, OneLineParser, default_argument_parser, default_setup, parse_bool
from utils.cli import attacker_list, parse_with_trailing_pairs, run_command
from utils.errors import ConfigError, DatasetError

TABLE = FlagTable((
    Flag("epsilon", "PIXELFADE.EPSILON", float, "bound on the feature MSE"),
    Flag("output", "OUTPUT_DIR", str, "output folder"),
    Flag("mode", "PIXELFADE.MODE", str, "constraint", ("reference", "per_image")),
    Flag("channels_last", "PIXELFADE.CHANNELS_LAST", bool, "layout"),
    Flag("epochs", "ATTACK.TOTAL_EPOCHS", int, "epochs; default: {default} ({key})"),
    Flag("save_png", "PIXELFADE.SAVE_PNG", help="store PNG (PIXELFADE.SAVE_PNG)", switch=True),
))


def parse(argv, table=TABLE):
    parser = default_argument_parser("test", table)
    return parser, parser.parse_args(argv)


def test_help_names_each_key_with_its_configs_default_or_the_flags_own_template():
    text = " ".join(default_argument_parser("test", TABLE).format_help().split())
    assert "bound on the feature MSE [PIXELFADE.EPSILON, default: 0.03]" in text
    assert "output folder [OUTPUT_DIR, default: empty]" in text
    assert "epochs; default: 100 (ATTACK.TOTAL_EPOCHS)" in text
    assert "--save_png store PNG (PIXELFADE.SAVE_PNG)" in text
    assert "--epsilon EPSILON" in text and "--mode {reference,per_image}" in text


def test_values_hold_only_the_flags_given_with_their_types():
    _, args = parse(["--epsilon", "0.5", "--channels_last", "off", "--epochs", "3"])
    assert TABLE.values(args) == {"PIXELFADE.EPSILON": 0.5, "PIXELFADE.CHANNELS_LAST": False,
                                  "ATTACK.TOTAL_EPOCHS": 3}
    _, args = parse(["--save_png"])
    assert TABLE.values(args) == {"PIXELFADE.SAVE_PNG": True}


@pytest.mark.parametrize("text, expected", [("True", True), ("on", True), ("1", True), ("YES", True),
                                            ("false", False), ("Off", False), ("0", False), ("no", False)])
def test_bool_flags_take_the_usual_words(text, expected):
    assert parse_bool(text) is expected


def test_a_bad_bool_word_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        parse(["--channels_last", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_flags_win_over_overrides_which_win_over_the_config_file(tmp_path):
    config_file = tmp_path / "c.yml"
    config_file.write_text("PIXELFADE:\n  EPSILON: 0.2\n  BETA: 0.2\n  MAX_ITER: 7\n")
    parser, args = parse(["--config_file", str(config_file), "--epsilon", "0.4", "PIXELFADE.EPSILON", "0.3",
                          "PIXELFADE.BETA", "0.3"])
    cfg, flag_of_key = default_setup(parser, args, TABLE, "protect")
    assert (cfg.PIXELFADE.EPSILON, cfg.PIXELFADE.BETA, cfg.PIXELFADE.MAX_ITER) == (0.4, 0.3, 7)
    assert cfg.OUTPUT_DIR == os.path.join("log", "market1501_protect")
    assert cfg.is_frozen()
    assert flag_of_key["PIXELFADE.EPSILON"] == "--epsilon" and flag_of_key["PIXELFADE.SAVE_PNG"] == "--save_png"


def test_extra_values_come_last_and_a_build_hook_replaces_the_merge():
    parser, args = parse(["--output", "a"])
    cfg, _ = default_setup(parser, args, TABLE, "train", extra_values={"OUTPUT_DIR": "b"})
    assert cfg.OUTPUT_DIR == "b"
    seen = []
    result = default_setup(parser, args, TABLE, "train",
                           build=lambda *call: seen.append(call) or "built")
    assert result == ("built", TABLE.flag_of_key)
    assert seen == [("", [], {"OUTPUT_DIR": "a"}, TABLE.flag_of_key)]


def test_a_flag_after_the_overrides_is_refused_by_name():
    parser, args = parse(["PIXELFADE.BETA", "0.3", "--epsilon", "0.4"])
    with pytest.raises(ConfigError, match="^--epsilon comes after the KEY VALUE overrides"):
        default_setup(parser, args, TABLE, "protect")


def test_a_flag_the_command_placed_itself_stays_where_it_is():
    def own(parser):
        parser.add_argument("--first")
        TABLE.add_flag(parser, "epochs")

    help_text = default_argument_parser("test", TABLE, own).format_help()
    options, settings = help_text.split("settings (each sets")
    assert "--epochs" in options and "--epochs" not in settings and "--epsilon" in settings


def test_a_table_refuses_a_name_twice():
    with pytest.raises(ValueError, match="twice"):
        FlagTable((Flag("a", "OUTPUT_DIR"), Flag("a", "MODEL.NAME")))


def test_one_line_parser_errors_are_config_errors():
    parser = default_argument_parser("test", TABLE, parser_class=OneLineParser)
    with pytest.raises(ConfigError, match="argument --epochs: invalid int value: 'x'"):
        parser.parse_args(["--epochs", "x"])


def test_run_command_turns_bad_input_and_ctrl_c_into_one_line(tmp_path, capsys):
    def bad(_):
        raise DatasetError("--root x: no such folder")

    def interrupted(state):
        state.output = str(tmp_path)
        raise KeyboardInterrupt

    assert run_command("tool", lambda _: None) == 0
    assert run_command("tool", lambda _: 3) == 3
    assert run_command("tool", bad) == 2
    assert capsys.readouterr().err == "tool: error: --root x: no such folder\n"
    assert run_command("tool", interrupted) == 130
    assert capsys.readouterr().err == (f"tool: interrupted: finished work is kept in {tmp_path}; "
                                       "rerun the same command to resume\n")
    with pytest.raises(RuntimeError):
        run_command("tool", lambda _: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_attacker_list_and_trailing_pairs():
    assert attacker_list("reference, strong,") == ("reference", "strong")
    assert attacker_list("none") == ()
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="+")
    parser.add_argument("--small", action="store_true")
    args, opts = parse_with_trailing_pairs(parser, ["a", "--small", "MODEL.NAME", "x"])
    assert args.names == ["a"] and args.small and opts == ["MODEL.NAME", "x"]
    with pytest.raises(SystemExit):
        parse_with_trailing_pairs(parser, ["a", "--big", "1"])


def test_building_a_parser_imports_no_torch():
    code = ("import sys, configs.cli, tools.sweep, tools.paper_tables, tools.feature_scale; "
            "tools.sweep.build_parser().format_help(); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "False"
