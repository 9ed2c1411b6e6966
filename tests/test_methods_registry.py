"""The method registry: each method's file declares its views and registers itself; a new
file is discovered and offered by the CLI with no other edit; docs and help follow the registry."""

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kerasssl import methods
from kerasssl.errors import KerassslError
from kerasssl.layers.views import ASYMMETRIC, SYMMETRIC, view_config
from kerasssl.methods.base import METHODS, SSLMethod, register_method
from kerasssl.registry import Registry
from test_layers_views import assert_lensing_views

ROOT = Path(__file__).resolve().parents[1]

THROWAWAY = '''
from kerasssl import losses
from kerasssl.methods.base import SSLMethod, register_method


@register_method("throwaway")
class Throwaway(SSLMethod):
    """A test's method: SimCLR's loss, views of its own (dihedral only)."""

    default_views = ({"dihedral": True}, {"dihedral": True, "noise": True})

    def method_loss(self, out):
        return losses.nt_xent(out["z1"], out["z2"], temperature=0.5)
'''


@pytest.fixture
def extra_method_dir(tmp_path, monkeypatch):
    """A directory on kerasssl.methods' path holding a throwaway method file; all undone after."""
    folder = tmp_path / "more_methods"
    folder.mkdir()
    (folder / "throwaway_method.py").write_text(THROWAWAY)
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(methods, "__all__", list(methods.__all__))
    monkeypatch.setattr(methods, "Throwaway", None, raising=False)  # removed again on undo
    monkeypatch.delitem(sys.modules, "kerasssl.methods.throwaway_method", raising=False)
    yield folder
    sys.modules.pop("kerasssl.methods.throwaway_method", None)


@pytest.mark.parametrize("name", methods.available())
def test_every_method_declares_lensing_views(name):
    cls = methods.get(name)
    assert cls.method_name == name
    assert_lensing_views(cls.default_views)


def test_byol_style_methods_use_asymmetric_views():
    for name in ("byol", "barlow_twins", "vicreg", "dino"):
        cls = methods.get(name)
        assert cls.default_views == ASYMMETRIC
        assert view_config(cls.default_views, 1)["blur"]["probability"] == 1.0
        assert view_config(cls.default_views, 2)["blur"]["probability"] == 0.1
    for name in ("simclr", "simsiam", "moco"):
        assert methods.get(name).default_views == SYMMETRIC
    assert view_config(methods.get("simclr").default_views, 1) == view_config(methods.get("simclr").default_views, 2)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KerassslError, match=r"unknown method 'no_such_method'; choose from .*simclr") as info:
        methods.get("no_such_method")
    assert "\n" not in str(info.value)
    assert methods.get("Barlow-Twins") is methods.BarlowTwins


def test_registry_refuses_a_second_class_under_a_taken_name():
    registry = Registry("thing")

    @registry.register("a")
    class A:
        pass

    with pytest.raises(KerassslError, match="thing 'a' is already registered"):
        @registry.register("A")
        class B:
            pass

    assert registry.get("A") is A and "a" in registry and registry.names() == ["a"]
    with pytest.raises(TypeError, match="SSLMethod subclasses"):
        register_method("not_a_method")(A)


def _method_param(command):
    return next(p for p in command.params if p.name == "method")


def test_a_new_method_file_is_registered_and_offered_with_no_other_edit(extra_method_dir, capsys):
    from kerasssl.cli import main
    from kerasssl.cli.fit import fit
    from kerasssl.cli.pretrain import pretrain

    assert "throwaway" not in methods.available()
    assert "throwaway" in methods.discover()
    cls = methods.get("Throwaway")
    assert issubclass(cls, SSLMethod) and methods.Throwaway is cls and cls.method_name == "throwaway"
    for command in (pretrain, fit):
        param = _method_param(command)
        assert param.type.convert("Throwaway", param, None) == "throwaway"
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "throwaway" in capsys.readouterr().out

    # The pretraining model takes its views from the method's own file.
    from kerasssl.config import RunConfig
    from kerasssl.pretrain import build_pretraining_model

    cfg = RunConfig.from_dict({"pretrain": {"method": "throwaway", "encoder": "tiny", "epochs": 1,
                                            "method_options": {"projection_dim": 8, "hidden_dim": 16}}})
    model = build_pretraining_model(cfg, (16, 16, 1), None, steps_per_epoch=1)
    assert isinstance(model, cls)
    stages = [[layer.name for layer in view.layers] for view in (model.view1, model.view2)]
    assert stages == [["throwaway_view1_dihedral"], ["throwaway_view2_dihedral", "throwaway_view2_noise"]]


def test_the_cli_refuses_an_unregistered_method_with_the_registry_line(capsys):
    from kerasssl.cli.pretrain import pretrain

    param = _method_param(pretrain)
    with pytest.raises(KerassslError, match="unknown method 'nope'; choose from barlow_twins, byol"):
        param.type.convert("nope", param, None)
    assert param.type.convert("BARLOW-TWINS", param, None) == "barlow_twins"
    assert isinstance(param.type, click.Choice)


def test_cli_help_lists_every_registered_method_and_encoder(capsys):
    from kerasssl import encoders
    from kerasssl.cli import main

    for command in ("pretrain", "fit"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        listed = re.search(r"--method \[([^\]]+)\]", out).group(1).split("|")
        assert listed == methods.available(), command
        assert "--encoder [efficientnetb0..7|efficientnetv2b0..3|efficientnetv2s|resnet50|tiny]" in out
    assert encoders.available()[:2] == ["efficientnetb0", "efficientnetb1"]


def test_readme_lists_every_registered_method():
    readme = (ROOT / "README.md").read_text()
    usage = re.search(r"kerasssl pretrain DATA --run-dir RUN --method ((?:\w+\|)+\w+)", readme).group(1)
    assert sorted(usage.split("|")) == methods.available()
    row = next(line for line in readme.splitlines() if line.startswith("| `kerasssl pretrain"))
    names = {"barlow_twins": "Barlow Twins", "moco": "MoCo"}
    for name in methods.available():
        shown = names.get(name, methods.get(name).__name__)
        assert shown.lower() in row.lower(), f"README's command table does not name {name}"


def test_sub_command_modules_do_not_import_keras_until_an_option_needs_it():
    code = ("import sys\n"
            "import kerasssl.cli.pretrain, kerasssl.cli.fit, kerasssl.cli.finetune\n"
            "from kerasssl.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
