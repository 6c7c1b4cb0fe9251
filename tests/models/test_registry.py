"""The model factory: logits (B, 1) for every architecture, preprocessing carried in the file."""

from pathlib import Path

import numpy as np
import pytest
import torch

from histoscan.errors import ModelError
from histoscan.models.bundle import load_model_file, memory_model_file, save_model_file
from histoscan.models.registry import create_model, list_models, model_spec


@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_one_logit(name: str) -> None:
    net = create_model(name).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 96, 96))
        feats = net.forward_features(torch.zeros(2, 3, 96, 96))
    assert out.shape == (2, 1)
    assert feats.ndim == 4
    assert net.get_submodule(model_spec(name).target_layer) is not None


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ModelError, match="resnet18"):
        create_model("resnet19")


def test_pretrained_offline_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Offline for real and at once: no socket opens, the HF cache is empty, the hub is offline.

    Setting HF_HUB_OFFLINE alone is not enough once huggingface_hub is imported (it reads the
    variable at import), which made this test wait 46 s on a network timeout.
    """
    import socket
    import time

    import huggingface_hub.constants as hf_constants

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"ImageNet weights for resnet18 .*online") as info:
        create_model("resnet18", pretrained=True)
    assert time.monotonic() - start < 15  # an offline refusal, not a network timeout
    assert info.value.__cause__ is not None  # the underlying error is kept for the message
    assert "without --pretrained" in str(info.value)


def test_model_file_round_trips_weights_and_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = model_spec("resnet18", input_px=128)
    net = create_model("resnet18").eval()
    path = tmp_path / "m.pt"
    save_model_file(
        path,
        memory_model_file(
            spec,
            net,
            temperature=1.7,
            threshold=0.3,
            val_logits=np.array([0.1, -2.0]),
            val_labels=np.array([1, 0]),
        ),
    )
    loaded = load_model_file(path)
    assert loaded.spec == spec and loaded.spec.input_px == 128
    assert (loaded.temperature, loaded.threshold) == (1.7, 0.3)
    x = torch.randint(0, 256, (3, 96, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(
            loaded.inference_net()(x), memory_model_file(spec, net).inference_net()(x)
        )
    np.testing.assert_allclose(loaded.meta.val_logits, [0.1, -2.0], rtol=1e-6)
    assert loaded.meta.val_labels.tolist() == [1, 0]


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a histoscan model file"):
        load_model_file(bogus)
    torch.save({"weights": torch.zeros(1)}, bogus)
    with pytest.raises(ModelError, match="not a histoscan model file"):
        load_model_file(bogus)
    with pytest.raises(ModelError, match="no such model file"):
        load_model_file(tmp_path / "missing.pt")


def test_ensemble_is_the_mean_of_its_members() -> None:
    torch.manual_seed(0)
    ens = create_model("histocnn_ensemble", n_members=2).eval()
    x = torch.rand(4, 3, 96, 96)
    with torch.no_grad():
        expected = (ens.members[0](x) + ens.members[1](x)) / 2
        assert torch.allclose(ens(x), expected, atol=1e-6)
        assert ens.forward_head(ens.forward_features(x), pre_logits=True).shape == (4, 512)
