"""The restricted unpickler's allow-list (issue 30): what the reference training script writes
loads; every other global is refused by name, and no payload ever runs.

The payloads are written here as raw protocol-2 pickle opcodes inside a real torch zip
archive, so they can name anything (also names that do not exist or could not be pickled by
Python itself); each one would create a marker file if it were ever called.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.cli import main
from qcsfer.models import get_config
from qcsfer.models.convert import load_reference_checkpoint
from qcsfer.models.unpickle import UnsafeCheckpointError, load_restricted
from qcsfer.models.weights import WeightsError


def fragment(obj: object) -> bytes:
    """The protocol-2 opcodes that build `obj`, without the header and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def call(module: str, name: str, args: bytes) -> bytes:
    """Opcodes that call the global module.name with the argument tuple built by `args`."""
    return b"c" + f"{module}\n{name}\n".encode() + args + b"R"


def checkpoint(path: Path, recorder: bytes) -> Path:
    """A torch zip archive (torch.save's own layout) whose pickle is the reference's
    checkpoint dict with `recorder` as its recorder object."""
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    pickled = b"\x80\x02}(" + fragment("epoch") + fragment(37) + fragment("recorder")
    pickled += recorder + b"u."
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            archive.writestr(info, pickled if info.filename.endswith("/data.pkl") else data)
    return path


def payloads(marker: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (the global the refusal must name, the opcodes); each writes `marker` if run."""
    code = f"open({str(marker)!r}, 'w').write('ran')"
    touch = fragment(("touch", str(marker)))
    return {
        # a third-party callable that runs a string (converted with exit 0 before the list)
        "numpy runstring": (
            "numpy.testing._private.utils.runstring",
            call("numpy.testing._private.utils", "runstring", fragment((code, {}))),
        ),
        "builtins.exec": ("builtins.exec", call("builtins", "exec", fragment((code,)))),
        "python 2 eval": ("builtins.eval", call("__builtin__", "eval", fragment((code,)))),
        "os.system": ("os.system", call("os", "system", fragment((f"touch {marker}",)))),
        "subprocess": (
            "subprocess.Popen",
            call("subprocess", "Popen", b"(" + fragment(["touch", str(marker)]) + b"t"),
        ),
        "torch.load": ("torch.load", call("torch", "load", fragment((str(marker),)))),
        # another function of the training script itself: not a recorder
        "script function": ("__main__.save_checkpoint", call("__main__", "save_checkpoint", touch)),
        # the recorder's name, but from another module
        "recorder elsewhere": (
            "utils.RecorderMeter_loss",
            call("utils", "RecorderMeter_loss", touch),
        ),
        # an attribute chain reaching past an allowed name
        "attribute chain": (
            "numpy.ndarray.__reduce__.__globals__",
            call("numpy", "ndarray.__reduce__.__globals__", fragment(())),
        ),
        # code hidden as an argument of an allowed global
        "nested in numpy": (
            "os.system",
            call("numpy.core.multiarray", "_reconstruct", b"(cos\nsystem\nt"),
        ),
        # protocol 0's INST opcode looks the class up the same way
        "INST opcode": ("os.system", b"(" + fragment(f"touch {marker}") + b"ios\nsystem\n"),
    }


PAYLOADS = list(payloads(Path("marker")))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_unexpected_globals_are_refused_by_name_and_never_run(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    name, recorder = payloads(marker)[payload]
    path = checkpoint(tmp_path / "evil.pth", recorder)
    with pytest.raises(UnsafeCheckpointError, match=f"it names {name}, which is not among"):
        load_restricted(path)
    with pytest.raises(WeightsError, match=rf"evil\.pth: refused: it names {name}"):
        load_reference_checkpoint(path, get_config("tiny"))
    assert not marker.exists()


def test_convert_refuses_a_third_party_callable(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "payload-ran"
    name, recorder = payloads(marker)["numpy runstring"]
    out = tmp_path / "converted.safetensors"
    path = checkpoint(tmp_path / "evil.pth", recorder)
    assert main(["convert", str(path), "--dataset", "rafdb", "--out", str(out)]) != 0
    assert f"it names {name}" in capsys.readouterr().err
    assert not out.exists() and not marker.exists()


class RecorderMeter_matrix:
    """Like the reference's confusion-matrix recorder: numpy arrays of several dtypes."""

    def __init__(self) -> None:
        self.total_epoch, self.current_epoch = 200, 0
        self.epoch_losses = np.zeros((200, 2), dtype=np.float32)
        self.y_pred, self.y_true = np.arange(7), np.arange(7)[::-1].copy()


def test_what_the_reference_script_writes_is_read_inertly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RecorderMeter_matrix, "__module__", "__main__")
    monkeypatch.setattr(
        sys.modules["__main__"], "RecorderMeter_matrix", RecorderMeter_matrix, False
    )
    path = tmp_path / "model_best.pth"
    weights = torch.randn(3, 2)
    torch.save(
        {
            "epoch": 12,
            "state_dict": {"module.w": weights},
            "best_acc": torch.tensor(92.5),
            "optimizer": {"state": {}, "param_groups": [{"lr": 9e-6, "rho": 0.05}]},
            "recorder_m": RecorderMeter_matrix(),
        },
        path,
    )
    obj, opaque = load_restricted(path)
    assert torch.equal(obj["state_dict"]["module.w"], weights)
    assert set(opaque) <= {
        "__main__.RecorderMeter_matrix",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
    }
    assert "__main__.RecorderMeter_matrix" in opaque and "numpy.ndarray" in opaque

    # numpy 1.x, which the authors used, spells the array constructor numpy.core.multiarray.
    array = fragment(np.arange(3)).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    _, opaque = load_restricted(checkpoint(tmp_path / "numpy1.pth", array))
    assert "numpy.core.multiarray._reconstruct" in opaque
