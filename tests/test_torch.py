"""Cross-framework tests: Flax <-> PyTorch state_dict, same outputs both ways."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeparams as ptp

torch = pytest.importorskip('torch')


def flax_mlp():
    return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])


def torch_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def flax_cnn():
    return nn.Sequential(
        [
            nn.Conv(6, (3, 3), padding=1),
            nn.BatchNorm(use_running_average=True),
            nn.relu,
            lambda x: x.mean(axis=(1, 2)),
            lambda x: x,
            nn.Dense(3),
        ]
    )


def torch_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 3),
    )


def run_torch(module, x: np.ndarray) -> np.ndarray:
    """The eval-mode output of a torch module on a NumPy input."""
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_mlp_flax_to_torch_and_back():
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    net = flax_mlp()
    v = net.init(jax.random.key(0), jnp.asarray(x))
    sd = ptp.to_torch_state_dict(v, tensors=True)
    tm = torch_mlp().eval()
    assert set(sd) == set(tm.state_dict())
    tm.load_state_dict(sd)
    out_t = run_torch(tm, x)
    np.testing.assert_allclose(out_t, np.asarray(net.apply(v, x)), atol=1e-5)

    tm2 = torch_mlp().eval()
    back, report = ptp.from_torch_state_dict(tm2.state_dict(), like=v)
    assert report.ok
    ref = run_torch(tm2, x)
    np.testing.assert_allclose(np.asarray(net.apply(back, x)), ref, atol=1e-5)


def _randomize_bn(tm):
    with torch.no_grad():
        bn = tm[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)


def test_cnn_with_batchnorm_both_ways():
    rng = np.random.default_rng(1)
    x_nhwc = rng.standard_normal((2, 5, 5, 2)).astype(np.float32)
    x_nchw = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    net = flax_cnn()
    v = net.init(jax.random.key(0), jnp.asarray(x_nhwc))
    v = jax.tree_util.tree_map(
        lambda a: a + 0.3 * jax.random.uniform(jax.random.key(2), a.shape), v
    )  # non-trivial batch stats and scales (var stays positive)

    sd = ptp.to_torch_state_dict(v, tensors=True)
    assert '1.num_batches_tracked' in sd and '1.running_var' in sd
    tm = torch_cnn().eval()
    assert set(sd) == set(tm.state_dict())
    tm.load_state_dict(sd)
    out_t = run_torch(tm, x_nchw)
    np.testing.assert_allclose(out_t, np.asarray(net.apply(v, x_nhwc)), atol=1e-5)

    tm2 = torch_cnn().eval()
    _randomize_bn(tm2)
    back, report = ptp.from_torch_state_dict(tm2.state_dict(), like=v)
    assert report.ok and report.unexpected == ()
    ref = run_torch(tm2, x_nchw)
    np.testing.assert_allclose(np.asarray(net.apply(back, x_nhwc)), ref, atol=1e-5)


def test_unmapped_entries_reported_and_user_rules():
    net = flax_mlp()
    v = net.init(jax.random.key(0), jnp.ones((1, 4)))
    sd = dict(torch_mlp().state_dict())
    sd['extra.weight'] = torch.zeros(2)
    del sd['2.bias']
    with pytest.raises(ptp.StructureError) as e:
        ptp.from_torch_state_dict(sd, like=v)
    assert "missing in source (1): 'params/layers_2/bias'" in str(e.value)
    assert "unexpected in source (1): 'extra.weight'" in str(e.value)
    _, report = ptp.from_torch_state_dict(sd, like=v, strict=False)
    assert report.missing == ('params/layers_2/bias',)

    renamed = {k.replace('0.', 'encoder.'): t for k, t in torch_mlp().state_dict().items()}
    rules = [
        (r'params/layers_0/kernel', 'encoder.weight', (1, 0)),
        (r'params/layers_0/bias', 'encoder.bias'),
    ]
    back, report = ptp.from_torch_state_dict(renamed, like=v, rules=rules)
    assert report.ok
    np.testing.assert_array_equal(
        back['params']['layers_0']['kernel'], renamed['encoder.weight'].numpy().T
    )
    out = ptp.to_torch_state_dict(back, rules=rules)
    assert set(out) == set(renamed)


def test_saved_file_runs_in_pytorch(tmp_path):
    from safetensors.torch import load_file

    net = flax_mlp()
    x = np.ones((2, 4), np.float32)
    v = net.init(jax.random.key(3), x)
    path = str(tmp_path / 'mlp.safetensors')
    ptp.save(path, ptp.unflatten(ptp.to_torch_state_dict(v)))
    sd = {k.replace('/', '.'): t for k, t in load_file(path).items()}
    tm = torch_mlp().eval()
    tm.load_state_dict(sd)
    np.testing.assert_allclose(run_torch(tm, x), net.apply(v, x), atol=1e-5)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16', 'float32', 'int8', 'bool'])
def test_tensors_of_every_torch_dtype_bit_exact(dtype):
    x = (jnp.arange(6.0).reshape(2, 3) - 2.5).astype(dtype)
    sd = ptp.to_torch_state_dict({'params': {'Dense_0': {'kernel': x}}}, tensors=True)
    t = sd['Dense_0.weight']
    assert str(t.dtype) == f'torch.{dtype}'
    back = np.asarray(jax.device_get(x)).T
    got = t.numpy() if dtype != 'bfloat16' else t.view(torch.int16).numpy()
    want = back if dtype != 'bfloat16' else back.view(np.int16)
    np.testing.assert_array_equal(got, want)


def test_a_pytorch_file_goes_straight_into_a_flax_tree(tmp_path):
    from safetensors.torch import save_file

    net = flax_mlp()
    v = net.init(jax.random.key(0), jnp.ones((2, 4)))
    tm = torch_mlp()
    path = str(tmp_path / 'torch_mlp.safetensors')
    save_file(tm.state_dict(), path)
    back, report = ptp.from_torch_state_dict(path, like=v)
    assert report.ok
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(net.apply(back, x)), want, rtol=1e-5, atol=1e-6)
    npz = str(tmp_path / 'sd.npz')
    np.savez(npz, **{k: t.numpy() for k, t in tm.state_dict().items()})
    back2, report2 = ptp.from_torch_state_dict(npz, like=v)
    assert report2.ok
    assert sorted(ptp.read_state_dict(npz)) == sorted(tm.state_dict())
    pt = tmp_path / 'model.pt'
    pt.write_bytes(b'not read')
    with pytest.raises(ptp.FormatError, match='save_model'):
        ptp.load(str(pt))
    with pytest.raises(ptp.FormatError, match='save_model'):
        ptp.from_torch_state_dict(str(pt), like=v)


def test_torch_tensors_in_a_tree_are_read_never_skipped():
    sd = torch_mlp().state_dict()
    n = sum(t.numel() for t in sd.values())
    assert ptp.count(sd) == n and ptp.nbytes(sd) == 4 * n
    assert ptp.summary(sd).totals.size == n
    assert ptp.find_nonfinite(sd) == []
    sd['0.weight'][0, 0] = float('nan')
    assert ptp.find_nonfinite(sd) == ['0.weight']
    with pytest.raises(ptp.NonFiniteError):
        ptp.assert_finite(sd)
    tied = {'a': sd['2.weight'], 'b': sd['2.weight']}
    assert ptp.find_ties(tied)[0].aliases == ('b',)
    bf = {'w': torch.arange(4, dtype=torch.bfloat16)}
    assert ptp.summary(bf).rows[0].mean == 1.5


def test_cast_and_the_file_format_metadata_hugging_face_reads(tmp_path):
    from safetensors import safe_open

    net = flax_mlp()
    v = net.init(jax.random.key(0), jnp.ones((2, 4)))
    sd = {k: t.to(torch.bfloat16) for k, t in torch_mlp().state_dict().items()}
    with pytest.raises(ptp.StructureError, match='cast=True'):
        ptp.from_torch_state_dict(sd, like=v)
    back, report = ptp.from_torch_state_dict(sd, like=v, cast=True)
    assert report.ok and ptp.get(back, 'params/layers_0/kernel').dtype == jnp.float32
    path = str(tmp_path / 'model.safetensors')
    ptp.save(path, ptp.to_torch_state_dict(v))
    with safe_open(path, framework='np') as f:
        assert f.metadata()['format'] == 'pt' and '0.weight' in f.keys()
    ptp.save(str(tmp_path / 'flax.safetensors'), v)
    with safe_open(str(tmp_path / 'flax.safetensors'), framework='np') as f:
        assert f.metadata()['format'] == 'flax'


def test_load_mismatch_hints_name_calls_that_work(tmp_path):
    """A PyTorch-layout file loaded with a Flax like suggests
    from_torch_state_dict, a pytreeparams file suggests load_into; each
    suggested call is run and works."""
    import re

    from safetensors.torch import save_file

    net = flax_mlp()
    v = net.init(jax.random.key(0), jnp.ones((2, 4)))
    for name, write in (
        ('foreign.safetensors', lambda p: save_file(torch_mlp().state_dict(), p)),
        ('ours.safetensors', lambda p: ptp.save(p, ptp.to_torch_state_dict(v))),
    ):
        path = str(tmp_path / name)
        write(path)
        with pytest.raises(ptp.StructureError, match='from_torch_state_dict') as e:
            ptp.load(path, like=v)
        call = re.search(r'(ptp\.from_torch_state_dict\(.*?\))', str(e.value)).group(1)
        back, report = eval(call, {'ptp': ptp, 'like': v})
        assert report.ok and ptp.paths(back) == ptp.paths(v)
    path = str(tmp_path / 'partial.msgpack')
    part = {'params': {'layers_0': v['params']['layers_0']}}
    ptp.save(path, part)
    with pytest.raises(ptp.StructureError, match='load_into') as e:
        ptp.load(path, like=v)
    call = re.search(r'(ptp\.load_into\(.*?strict=False\))', str(e.value)).group(1)
    back, report = eval(call, {'ptp': ptp, 'like': v})
    assert sorted(report.loaded) == sorted(ptp.paths(part))
    assert sorted(report.missing) == ['params/layers_2/bias', 'params/layers_2/kernel']
    chex.assert_trees_all_equal(back, v)
