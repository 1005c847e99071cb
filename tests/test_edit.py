"""Edit: only changed tensors kept, the base never touched, removal bit-exact, files atomic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import unlearning.edit as edit_module
from unlearning.edit import Edit
from unlearning.errors import DivergedError, InputError


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def assert_params_equal(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    own = dict(module.named_parameters())
    assert own.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(own[name].detach(), value), f"'{name}' differs"


@pytest.fixture()
def base() -> nn.Module:
    return small_net()


@pytest.fixture()
def trained(base: nn.Module) -> nn.Module:
    """A copy of ``base`` with the first layer's weight and the last bias changed."""
    out = copy.deepcopy(base)
    with torch.no_grad():
        out[0].weight.add_(0.5)
        out[2].bias.mul_(-2.0).add_(0.25)
    return out


@pytest.fixture()
def edit(base: nn.Module, trained: nn.Module) -> Edit:
    names = [n for n, _ in base.named_parameters()]
    return Edit.from_trained(base, trained, names, method="esd", settings={"lr": 1e-3, "iterations": 5, "variant": "x"},
                             timings={"unlearn_s": 1.5}, base={"source": "small_net", "family": "test"})


# ---- collecting ---------------------------------------------------------------------------------

def test_from_trained_keeps_only_the_changed_parameters(edit: Edit, trained: nn.Module):
    assert sorted(edit.params) == ["0.weight", "2.bias"]
    own = dict(trained.named_parameters())
    for name, value in edit.params.items():
        assert torch.equal(value, own[name].detach())
        assert value.dtype == torch.float32 and value.device.type == "cpu"
    assert edit.num_changed == 4 * 3 + 2
    assert edit.summary() == {"method": "esd", "changed_tensors": 2, "changed_values": 14}


def test_from_trained_ignores_names_not_asked_for(base: nn.Module, trained: nn.Module):
    assert sorted(Edit.from_trained(base, trained, ["2.bias", "0.bias"]).params) == ["2.bias"]


def test_from_trained_stores_a_copy_not_a_view(base: nn.Module, trained: nn.Module):
    e = Edit.from_trained(base, trained, ["0.weight"])
    kept = e.params["0.weight"].clone()
    with torch.no_grad():
        trained[0].weight.add_(1.0)  # the method's copy goes on changing after the edit was taken
    assert torch.equal(e.params["0.weight"], kept)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_trained_weights_raise_diverged(base: nn.Module, trained: nn.Module, bad: float):
    before = snapshot(base)
    with torch.no_grad():
        trained[2].weight[0, 1] = bad
    with pytest.raises(DivergedError, match=r"non-finite weights in '2\.weight'.*lower the learning rate"):
        Edit.from_trained(base, trained, [n for n, _ in base.named_parameters()])
    assert_params_equal(base, before)


# ---- applying -----------------------------------------------------------------------------------

def test_apply_to_copy_leaves_the_base_bit_identical(edit: Edit, base: nn.Module, trained: nn.Module):
    before = snapshot(base)
    edited = edit.apply_to_copy(base)
    assert edited is not base
    assert_params_equal(base, before)
    assert_params_equal(edited, snapshot(trained))  # the copy has the new values (and the rest unchanged)


def test_applied_restores_the_originals_bit_for_bit(edit: Edit, base: nn.Module, trained: nn.Module):
    before = snapshot(base)
    with edit.applied(base) as module:
        assert module is base
        assert_params_equal(base, snapshot(trained))
    assert_params_equal(base, before)


def test_applied_restores_even_when_the_body_raises(edit: Edit, base: nn.Module):
    before = snapshot(base)
    with pytest.raises(RuntimeError, match="boom"), edit.applied(base):
        assert not torch.equal(base[0].weight, before["0.weight"])
        raise RuntimeError("boom")
    assert_params_equal(base, before)


def test_applied_is_exact_where_add_and_subtract_is_not():
    # w + d - d != w in float32 for these values: removal must restore the kept original, not undo a delta
    base = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        base.weight.fill_(0.1)
    trained = copy.deepcopy(base)
    with torch.no_grad():
        trained.weight.fill_(1e8)
    e = Edit.from_trained(base, trained, ["weight"])
    assert not torch.equal(base.weight + (trained.weight - base.weight) - (trained.weight - base.weight), base.weight)
    before = snapshot(base)
    with e.applied(base):
        pass
    assert_params_equal(base, before)


def test_deltas_are_new_minus_old(edit: Edit, base: nn.Module, trained: nn.Module):
    deltas = edit.deltas(base)
    assert sorted(deltas) == sorted(edit.params)
    assert torch.allclose(deltas["0.weight"], torch.full((3, 4), 0.5))
    assert torch.allclose(deltas["2.bias"], trained[2].bias.detach() - base[2].bias.detach())


# ---- another model --------------------------------------------------------------------------------

def test_an_edit_with_an_unknown_name_is_refused(base: nn.Module):
    e = Edit(params={"5.weight": torch.zeros(2, 3)})
    for use in (e.check_compatible, e.apply_to_copy):
        with pytest.raises(InputError, match=r"'5\.weight'.*another model"):
            use(base)
    with pytest.raises(InputError, match="another model"), e.applied(base):
        pass


def test_an_edit_with_the_wrong_shape_is_refused_and_changes_nothing(base: nn.Module):
    # the first tensor fits, the second does not: nothing may be applied half-way
    e = Edit(params={"0.bias": torch.full((3,), 9.0), "2.weight": torch.zeros(3, 3)})
    before = snapshot(base)
    with pytest.raises(InputError, match=r"'2\.weight' has shape \(3, 3\) but the model's is \(2, 3\)"):
        e.check_compatible(base)
    with pytest.raises(InputError, match="another model"), e.applied(base):
        pass
    with pytest.raises(InputError, match="another model"):
        e.apply_to_copy(base)
    assert_params_equal(base, before)


# ---- files ----------------------------------------------------------------------------------------

def test_save_load_round_trip(edit: Edit, tmp_path):
    path = edit.save(tmp_path / "edit.safetensors")
    assert path == tmp_path / "edit.safetensors"
    loaded = Edit.load(path)
    assert sorted(loaded.params) == sorted(edit.params)
    for name, value in edit.params.items():
        assert torch.equal(loaded.params[name], value)
    assert loaded.method == "esd"
    assert loaded.settings == {"lr": 1e-3, "iterations": 5, "variant": "x"}
    assert loaded.timings == {"unlearn_s": 1.5}
    assert loaded.base == {"source": "small_net", "family": "test"}


def test_a_loaded_edit_applies_like_the_original(edit: Edit, base: nn.Module, trained: nn.Module, tmp_path):
    loaded = Edit.load(edit.save(tmp_path / "edit.safetensors"))
    assert_params_equal(loaded.apply_to_copy(base), snapshot(trained))


def test_save_leaves_no_temporary_file(edit: Edit, tmp_path):
    edit.save(tmp_path / "edit.safetensors")
    edit.save(tmp_path / "edit.safetensors")  # overwriting too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit.safetensors"]


def test_a_failed_save_writes_nothing_and_keeps_an_earlier_file(edit: Edit, tmp_path, monkeypatch):
    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a half-written file, as a crash mid-write would leave
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(edit_module, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        edit.save(tmp_path / "new.safetensors")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    earlier = edit.save(tmp_path / "edit.safetensors").read_bytes()
    monkeypatch.setattr(edit_module, "save_file", failing_save_file)
    with pytest.raises(OSError):
        Edit(params={"x": torch.ones(1)}, method="other").save(tmp_path / "edit.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit.safetensors"]
    assert (tmp_path / "edit.safetensors").read_bytes() == earlier


def test_load_refuses_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="no edit file"):
        Edit.load(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors edit"):
        Edit.load(junk)
