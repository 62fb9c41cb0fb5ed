"""`seedx convert`: the one-time pickle -> safetensors conversion, from the command line."""

import json

import torch
from safetensors.torch import load_file

from seedx_agent.cli import main


def _write_sharded_bin(folder):
    folder.mkdir()
    shards = {"pytorch_model-00001-of-00002.bin": {"a.weight": torch.randn(4, 3)},
              "pytorch_model-00002-of-00002.bin": {"b.weight": torch.randn(2, 2),
                                                   "b.bias": torch.randn(2)}}
    weight_map = {}
    for name, tensors in shards.items():
        torch.save(tensors, folder / name)
        weight_map.update({k: name for k in tensors})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    return {k: v for tensors in shards.values() for k, v in tensors.items()}


def test_convert_sharded_bin_to_bf16_safetensors(tmp_path, capsys):
    expected = _write_sharded_bin(tmp_path / "llm")
    assert main(["convert", str(tmp_path / "llm"), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    loaded = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        loaded.update(load_file(f))
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == torch.bfloat16
        torch.testing.assert_close(loaded[key].float(), value.to(torch.bfloat16).float())
    assert (tmp_path / "out" / "config.json").exists()


def test_convert_refuses_unsafe_pickle(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "agent").mkdir()
    torch.save({"x": Evil()}, tmp_path / "agent" / "pytorch_model.bin")
    code = main(["convert", str(tmp_path / "agent"), str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code != 0
    assert "pwned" not in captured.out
    assert "weights_only" in captured.err
