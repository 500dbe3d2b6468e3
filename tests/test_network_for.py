"""A trainer's own network (Trainer.network_for) is the one validation, hiennu_predict and exported zips build; a
trainer that overrides build_network instead is refused before anything is written."""

from __future__ import annotations

import sys

import pytest

from hiennu.errors import HiennuError
from hiennu.inference.model_zip import export_model_zip
from hiennu.inference.predictor import Predictor
from hiennu.networks.unet import build_network
from hiennu.training.launch import train
from hiennu.training.trainers import get_trainer_class
from helpers import fold_dir, load, make_tiny_dataset, options, write_module
from test_training import make_tiny_raw_dataset

MODULE_SOURCE = """
    import dataclasses
    from hiennu.networks.unet import build_network
    from hiennu.training.trainers import TrainerDice

    class WideTrainer(TrainerDice):
        @classmethod
        def network_for(cls, configuration):
            net = configuration.network
            return build_network(dataclasses.replace(net, features_per_stage=[2 * f for f in net.features_per_stage]))

    class OldStyleTrainer(TrainerDice):
        def build_network(self):
            return super().build_network()

    class PlainMethodTrainer(TrainerDice):
        def network_for(self, configuration):
            return build_network(configuration.network)

    def local_trainer():
        class LocalWide(WideTrainer):
            pass
        return LocalWide
    """


def _parameters(predictor: Predictor) -> int:
    return sum(p.numel() for p in predictor.ensemble.networks[0].parameters())


def test_a_trainers_own_network_is_validated_predicted_and_exported_with(hiennu_roots, tmp_path):
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    make_tiny_raw_dataset(hiennu_roots["hiennu_raw"])
    module = write_module(tmp_path, "my_networks", MODULE_SOURCE)
    out = train(options(epochs=1, final_validation=True), "WideTrainer", module)
    assert (out / "validation" / "summary.json").is_file()  # validated with the wide network, not refused
    assert load(out / "checkpoint_final.pth")["network_builder"] == "my_networks:WideTrainer"
    model_dir = out.parent
    predictor = Predictor.from_model_dir(model_dir)
    plans_net = build_network(predictor.configuration.network)
    assert _parameters(predictor) > sum(p.numel() for p in plans_net.parameters())
    zipped = Predictor.from_zip(export_model_zip(model_dir, tmp_path / "wide.zip"))
    assert _parameters(zipped) == _parameters(predictor)
    # the trainer's module gone: prediction says what to do instead of building another network
    sys.modules.pop(module)
    sys.path.remove(str(tmp_path))
    with pytest.raises(HiennuError, match="trained by my_networks:WideTrainer.*cannot be imported.*PYTHONPATH"):
        Predictor.from_model_dir(model_dir)
    # a built-in trainer's checkpoint names no builder: the plans' network, nothing imported
    builtin = train(options(epochs=1), "TrainerDice")
    assert "network_builder" not in load(builtin / "checkpoint_final.pth")


def test_a_trainer_overriding_build_network_is_refused_before_anything_is_written(hiennu_roots, tmp_path, capsys):
    from hiennu.cli.train import main
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"])
    module = write_module(tmp_path, "old_networks", MODULE_SOURCE)
    with pytest.raises(HiennuError, match="overrides build_network; override the class method network_for"):
        get_trainer_class("OldStyleTrainer", module)
    assert main(["Tiny", f"{module}:OldStyleTrainer", "0", "--epochs", "1", "--device", "cpu", "-q"]) == 1
    assert "override the class method network_for" in capsys.readouterr().err
    assert not fold_dir(hiennu_roots["hiennu_results"], "OldStyleTrainer").parent.exists()
    with pytest.raises(HiennuError, match="network_for must be a class method"):
        get_trainer_class("PlainMethodTrainer", module)
    from hiennu.training.trainer import check_trainer_class
    with pytest.raises(HiennuError, match="prediction imports by name; define the class at the top level"):
        check_trainer_class(sys.modules[module].local_trainer())
