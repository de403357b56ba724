"""The one name -> object registry that data sets, backbones and other pluggable pieces use."""
import pytest

from data import DATASETS
from modeling.backbones import BACKBONES
from utils.errors import ConfigError, PixelFadeError
from utils.registry import Registry


def test_register_get_names_and_membership():
    widgets = Registry("widget")

    @widgets.register("small")
    def small():
        return "s"

    @widgets.register("big")
    class Big:
        pass

    widgets.register("tiny")(len)
    assert small() == "s" and widgets.get("small") is small  # the decorator returns it unchanged
    assert widgets.get("big") is Big and widgets.get("tiny") is len
    assert widgets.names() == ("big", "small", "tiny")
    assert list(widgets) == ["big", "small", "tiny"] and len(widgets) == 3
    assert "small" in widgets and "huge" not in widgets and [] not in widgets
    assert "widget" in repr(widgets) and "small" in repr(widgets)


def test_duplicate_names_are_refused():
    widgets = Registry("widget")
    widgets.register("a")(len)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        widgets.register("a")(max)
    assert widgets.get("a") is len
    with pytest.raises(ValueError, match="non-empty strings"):
        widgets.register("")


@pytest.mark.parametrize("config_key, message", [
    (None, r"^unknown widget 'huge'; known: a, b$"),
    ("MODEL.WIDGET", r"^unknown widget 'huge' \(MODEL.WIDGET\); known: a, b$"),
])
def test_unknown_name_is_a_config_error_naming_kind_name_and_valid_names(config_key, message):
    widgets = Registry("widget", config_key=config_key)
    widgets.register("b")(len)
    widgets.register("a")(max)
    with pytest.raises(ConfigError, match=message) as caught:
        widgets.get("huge")
    assert isinstance(caught.value, PixelFadeError)  # the CLIs print it on one line, exit 2
    with pytest.raises(ConfigError, match="unknown widget"):
        widgets.get(["unhashable"])


def test_empty_registry_says_so():
    with pytest.raises(ConfigError, match="known: none"):
        Registry("gadget").get("x")


def test_toolkit_registries_use_it():
    assert isinstance(DATASETS, Registry) and isinstance(BACKBONES, Registry)
    assert {"market1501", "cuhk03", "msmt17", "image_folder"} <= set(DATASETS.names())
    assert {"resnet50", "resnet101", "resnet152", "resnet50_nl", "resnet50_ibn_a"} <= set(BACKBONES.names())
