"""Every param strategy's checkpoint exports to a plain LLaMA that computes the same function."""
import pytest
import torch

from tests.helpers import run_train
from trainer import export
from trainer.registry import PARAM


@pytest.mark.parametrize("name", PARAM.names())
def test_export_matches_the_trained_model(tmp_path, name):
    run_train(tmp_path, [f"param={name}", "train.steps=3"])
    ckpt = tmp_path / "runs" / "run" / "checkpoints" / "step_0000003"
    model, _, _ = export.load_converted(str(ckpt))
    dense, plain = export.export_dense(str(ckpt))
    assert all(".weight" in k or k.endswith("inv_freq") for k in dense)
    tokens = torch.randint(0, model.embed.weight.shape[0], (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(tokens), plain(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert export.main([str(ckpt), "--out", str(tmp_path / "dense.pt")]) == 0
    assert set(torch.load(tmp_path / "dense.pt")) == set(dense)


def test_export_refuses_a_damaged_checkpoint(tmp_path, capsys):
    run_train(tmp_path, ["train.steps=2"])
    ckpt = tmp_path / "runs" / "run" / "checkpoints" / "step_0000002"
    (ckpt / "trainer.pt").write_bytes(b"oops")
    assert export.main([str(ckpt)]) == 2
    assert "is not usable" in capsys.readouterr().err
