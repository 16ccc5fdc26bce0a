"""HybridViT as docs/model.md describes it: shapes, pretrained loading, parameter counts, freezing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from quakemon.base.errors import PretrainedWeightsError
from quakemon.models import Backbone, HybridViT, stem_grid
from quakemon.models.params import DEPTHS, parameter_counts

MODEL_DOC = Path(__file__).resolve().parents[2] / "docs" / "model.md"


def test_shape_table_tiny_depth4():
    model = HybridViT(Backbone.TINY, depth=4, in_channels=3, num_classes=2, img_size=(33, 64)).eval()
    x = torch.randn(2, 3, 33, 64)
    shapes = []
    h = x
    for layer in model.stem.layers:
        h = layer(h)
        if isinstance(layer, torch.nn.BatchNorm2d):
            shapes.append(list(h.shape))
    assert shapes == [[2, 64, 17, 32], [2, 128, 9, 16], [2, 192, 5, 8]]
    seq = h.flatten(2)
    assert list(seq.shape) == [2, 192, 40]
    assert list(seq.transpose(1, 2).shape) == [2, 40, 192]
    assert list(model.pos_embed.shape) == [1, 41, 192]
    feats = model.forward_features(x)
    assert list(feats.shape) == [2, 41, 192]
    assert list(model.forward_head(feats).shape) == [2, 2]
    assert len(model.blocks) == 4


def test_stem_has_no_conv_bias_and_relu_only_after_first_two():
    model = HybridViT(Backbone.TINY, depth=1)
    kinds = [type(m).__name__ for m in model.stem.layers]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"]
    assert all(m.bias is None for m in model.stem.layers if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(
    ("img_size", "in_channels", "grid"),
    [((33, 64), 3, (5, 8)), ((33, 128), 3, (5, 16)), ((65, 64), 3, (9, 8)), ((33, 64), 1, (5, 8))],
)
def test_other_sizes_and_channels(img_size, in_channels, grid):
    assert stem_grid(img_size) == grid
    model = HybridViT(Backbone.TINY, depth=1, in_channels=in_channels, img_size=img_size).eval()
    out = model(torch.randn(3, in_channels, *img_size))
    assert out.shape == (3, 2)
    assert model.pos_embed.shape == (1, grid[0] * grid[1] + 1, 192)


def test_wrong_input_shape_is_a_clear_error():
    model = HybridViT(Backbone.TINY, depth=1)
    with pytest.raises(ValueError, match=r"expected input \[B, 3, 33, 64\], got \[1, 3, 33, 65\]"):
        model(torch.randn(1, 3, 33, 65))


def test_depth_none_uses_all_blocks_and_bad_depth_refused():
    assert len(HybridViT(Backbone.TINY, depth=None).blocks) == 12
    with pytest.raises(ValueError, match="depth"):
        HybridViT(Backbone.TINY, depth=13)


@pytest.fixture(scope="module")
def timm_vit_file(tmp_path_factory):
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("w") / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return vit, path


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pretrained_from_local_file(timm_vit_file, tmp_path, fmt):
    vit, path = timm_vit_file
    if fmt == "pth":
        path = tmp_path / "vit_tiny.pth"
        torch.save(vit.state_dict(), path)
    model = HybridViT(Backbone.TINY, depth=4, img_size=(33, 64), pretrained=path)
    ref = vit.state_dict()
    ours = model.state_dict()
    for i in range(4):
        for k, v in ref.items():
            if k.startswith(f"blocks.{i}."):
                assert torch.equal(ours[k], v), k
    assert torch.equal(ours["cls_token"], ref["cls_token"])
    assert torch.equal(ours["norm.weight"], ref["norm.weight"]) and torch.equal(ours["norm.bias"], ref["norm.bias"])
    expected_pos = resample_abs_pos_embed(ref["pos_embed"], new_size=[5, 8], old_size=[14, 14], num_prefix_tokens=1)
    assert torch.equal(ours["pos_embed"], expected_pos)
    assert model.pretrained_report["missing"] == []


def test_pretrained_file_missing_needed_keys_is_refused(timm_vit_file, tmp_path):
    vit, _ = timm_vit_file
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.2.")}
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(PretrainedWeightsError, match="blocks.2"):
        HybridViT(Backbone.TINY, depth=4, pretrained=path)
    # Blocks beyond `depth` are not needed, but their absence is reported, not dropped silently.
    model = HybridViT(Backbone.TINY, depth=2, pretrained=path)
    assert any(k.startswith("blocks.2.") for k in model.pretrained_report["missing"])


def test_pretrained_unexpected_keys_are_reported(timm_vit_file, tmp_path):
    vit, _ = timm_vit_file
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    state["extra.tensor"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    model = HybridViT(Backbone.TINY, depth=1, pretrained=path)
    assert model.pretrained_report["unexpected"] == ["extra.tensor"]


def test_pretrained_true_without_cache_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    with pytest.raises(PretrainedWeightsError, match=r"TINY \(vit_tiny_patch16_224\).*Provide a local file"):
        HybridViT(Backbone.TINY, depth=1, pretrained=True)


def test_pretrained_true_from_hf_cache(timm_vit_file, tmp_path, monkeypatch):
    """A Hugging Face cache laid out as huggingface_hub writes it is found offline."""
    vit, path = timm_vit_file
    repo = vit.pretrained_cfg["hf_hub_id"]
    root = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc123")
    snap = root / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(path.read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    model = HybridViT(Backbone.TINY, depth=1, pretrained=True)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"])


def test_missing_local_file_names_backbone(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="backbone SMALL"):
        HybridViT(Backbone.SMALL, depth=1, pretrained=tmp_path / "nope.safetensors")


def test_freeze_backbone_gradients():
    model = HybridViT(Backbone.TINY, depth=2, freeze_backbone=True)
    frozen = set(model.frozen_parameter_names())
    assert frozen and all(n.startswith(("blocks.", "norm.")) for n in frozen)
    loss = model(torch.randn(4, 3, 33, 64)).sum()
    loss.backward()
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None, name
    assert any(n.startswith("stem.") for n, _ in model.named_parameters() if n not in frozen)
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())


def test_parameter_counts_match_the_table_in_the_model_doc():
    text = MODEL_DOC.read_text()
    with torch.device("meta"):  # shapes only: the counts without allocating and initialising the weights
        counts = parameter_counts()
    for b in Backbone:
        row = re.search(rf"^\| {b.name} \| {b.timm_name} \| ([\d,]+) \| ([\d,]+) \|$", text, re.M)
        assert row, f"docs/model.md has no parameter row for {b.name}"
        documented = {DEPTHS[0]: int(row.group(1).replace(",", "")), DEPTHS[1]: int(row.group(2).replace(",", ""))}
        assert documented == counts[b.name], b.name


def test_prepare_for_inference_folds_the_stem_and_keeps_outputs() -> None:
    """The engine's copy: BatchNorm folded into the stem convolutions, channels_last; same outputs, original intact."""
    from quakemon.pipeline.engine import prepare_for_inference

    torch.manual_seed(0)
    model = HybridViT("TINY", depth=2, img_size=(33, 64)).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    fast = prepare_for_inference(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 3  # the original is untouched
    x = torch.randn(5, 3, 33, 64)
    with torch.inference_mode():
        ref = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
