"""Cross-framework tests: Flax <-> PyTorch state_dict, same outputs both ways."""

from __future__ import annotations

import re

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


@pytest.mark.heavy
def test_cnn_with_batchnorm_both_ways():
    rng = np.random.default_rng(1)
    x_nhwc = rng.standard_normal((2, 5, 5, 2)).astype(np.float32)
    x_nchw = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    net = flax_cnn()
    v = jax.jit(net.init)(jax.random.key(0), jnp.asarray(x_nhwc))
    v = jax.tree_util.tree_map(
        lambda a: a + 0.3 * jax.random.uniform(jax.random.key(2), a.shape), v
    )  # non-trivial batch stats and scales (var stays positive)
    apply = jax.jit(net.apply)  # the model is the reference here, not the subject

    sd = ptp.to_torch_state_dict(v, tensors=True)
    assert '1.num_batches_tracked' in sd and '1.running_var' in sd
    tm = torch_cnn().eval()
    assert set(sd) == set(tm.state_dict())
    tm.load_state_dict(sd)
    out_t = run_torch(tm, x_nchw)
    np.testing.assert_allclose(out_t, np.asarray(apply(v, x_nhwc)), atol=1e-5)

    tm2 = torch_cnn().eval()
    _randomize_bn(tm2)
    back, report = ptp.from_torch_state_dict(tm2.state_dict(), like=v)
    assert report.ok and report.unexpected == ()
    ref = run_torch(tm2, x_nchw)
    np.testing.assert_allclose(np.asarray(apply(back, x_nhwc)), ref, atol=1e-5)


def test_unmapped_entries_reported_and_user_rules():
    net = flax_mlp()
    v = net.init(jax.random.key(0), jnp.ones((1, 4)))
    sd = dict(torch_mlp().state_dict())
    sd['extra.weight'] = torch.zeros(2)
    del sd['2.bias']
    with pytest.raises(ptp.StructureError) as e:
        ptp.from_torch_state_dict(sd, like=v)
    assert "missing 1 path in source: 'params/layers_2/bias'" in str(e.value)
    assert "unexpected 1 path in source: 'extra.weight'" in str(e.value)
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


class _FlatCNN(nn.Module):
    """Conv -> BatchNorm -> relu -> flatten -> Dense: the layout trap."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding=1)(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _torch_flat_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 6, 3),
    ).eval()


_CNN_RULES = [
    ('params/Conv_0/kernel', '0.weight'),
    ('params/Conv_0/bias', '0.bias'),
    ('params/BatchNorm_0/scale', '1.weight'),
    ('params/BatchNorm_0/bias', '1.bias'),
    ('batch_stats/BatchNorm_0/mean', '1.running_mean'),
    ('batch_stats/BatchNorm_0/var', '1.running_var'),
    ('params/Dense_0/kernel', '4.weight'),
    ('params/Dense_0/bias', '4.bias'),
]


@pytest.mark.parametrize('direction', ['flax_to_torch', 'torch_to_flax'])
def test_cnn_with_a_flatten_computes_the_same_in_both_frameworks(direction):
    """Flax flattens NHWC, PyTorch NCHW: with after_flatten the first Dense
    after the flatten gets its rows permuted, and the outputs agree (<= 1e-5);
    without it the model loads cleanly and computes something else."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 2)).astype(np.float32)  # NHWC
    net = _FlatCNN()
    v = net.init(jax.random.key(0), jnp.asarray(x))
    rules = _CNN_RULES
    flat = {'params/Dense_0': (5, 6, 4)}
    tm = _torch_flat_cnn()
    if direction == 'flax_to_torch':
        v = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), v)
        v = ptp.update(v, 'batch_stats/**/var', lambda a: jnp.abs(a) + 0.5)
        for after, close in ((flat, True), (None, False)):
            sd = ptp.to_torch_state_dict(v, rules, tensors=True, after_flatten=after)
            assert not tm.load_state_dict(sd, strict=True).missing_keys
            got = run_torch(tm, x.transpose(0, 3, 1, 2))
            want = np.asarray(net.apply(v, x))
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5) == close
    else:
        with torch.no_grad():
            tm[1].running_mean.normal_()
            tm[1].running_var.uniform_(0.5, 2.0)
            tm[1].weight.normal_()
        want = run_torch(tm, x.transpose(0, 3, 1, 2))
        for after, close in ((flat, True), (None, False)):
            back, report = ptp.from_torch_state_dict(tm.state_dict(), v, rules, after_flatten=after)
            assert report.ok
            got = np.asarray(net.apply(back, x))
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5) == close
    with pytest.raises(ptp.StructureError, match='flattens to 150 inputs'):
        ptp.to_torch_state_dict(v, rules, after_flatten={'params/Dense_0': (5, 6, 5)})
    with pytest.raises(ptp.PathError, match='no Dense kernel'):
        ptp.to_torch_state_dict(v, rules, after_flatten={'params/Dense_9': (5, 6, 4)})


def test_tied_weights_convert_strictly_both_ways():
    """A GPT-2-like head tied to the embedding: PyTorch lists it under both
    names. ties= writes the alias as the same tensor, and reads it back
    (checked equal, dropped); shared storage is recognised without ties=; the
    strict error names the ties= that fixes it."""

    class TiedLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(7, 4)
            self.lm_head = torch.nn.Linear(4, 7, bias=False)
            self.lm_head.weight = self.wte.weight

    tm = TiedLM()
    like = {'params': {'wte': {'embedding': jnp.zeros((7, 4))}}}
    ties = {'lm_head.weight': 'wte.weight'}
    sd = tm.state_dict()
    back, report = ptp.from_torch_state_dict(sd, like)  # shared storage: a tie
    assert report.ok and report.dropped == ('lm_head.weight',)
    np.testing.assert_array_equal(back['params']['wte']['embedding'], sd['wte.weight'].numpy())
    copied = {k: v.clone() for k, v in sd.items()}  # e.g. read from a file: no storage
    with pytest.raises(ptp.StructureError, match=re.escape(f'pass ties={ties!r}')):
        ptp.from_torch_state_dict(copied, like)
    back2, report2 = ptp.from_torch_state_dict(copied, like, ties=ties)
    assert report2.ok
    chex.assert_trees_all_equal(back2, back)
    copied['lm_head.weight'] += 1
    with pytest.raises(ptp.StructureError, match='not tied'):
        ptp.from_torch_state_dict(copied, like, ties=ties)
    out = ptp.to_torch_state_dict(back, tensors=True, ties=ties)
    assert out['lm_head.weight'] is out['wte.weight']
    fresh = TiedLM()
    assert not fresh.load_state_dict(out, strict=True).missing_keys
    torch.testing.assert_close(fresh.lm_head.weight, tm.wte.weight)
    with pytest.raises(ptp.StructureError, match='is not in the state_dict'):
        ptp.to_torch_state_dict(back, ties={'lm_head.weight': 'wte.wieght'})


class EncoderLayer(nn.Module):
    """Flax twin of torch.nn.TransformerEncoderLayer (post-norm, ReLU, batch first)."""

    d: int = 8
    heads: int = 2
    ff: int = 16

    @nn.compact
    def __call__(self, x):
        attn = nn.MultiHeadDotProductAttention(num_heads=self.heads, name='self_attn')(x, x)
        x = nn.LayerNorm(epsilon=1e-5, name='norm1')(x + attn)
        h = nn.Dense(self.d, name='linear2')(nn.relu(nn.Dense(self.ff, name='linear1')(x)))
        return nn.LayerNorm(epsilon=1e-5, name='norm2')(x + h)


@pytest.mark.parametrize('direction', ['torch_to_flax', 'flax_to_torch'])
def test_transformer_encoder_layer_both_ways(direction):
    """attention_rules split in_proj_weight/in_proj_bias into Flax's query, key
    and value kernels (E, H, D) and biases and out_proj into the out kernel
    (H, D, E), and stack them back: a torch TransformerEncoderLayer and its Flax
    twin compute the same within 1e-5, both ways, and the state dict comes
    back bit for bit."""
    rules = ptp.attention_rules('params/self_attn', 'self_attn')
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    tm = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    net = EncoderLayer()
    like = jax.jit(net.init)(jax.random.key(0), jnp.asarray(x))
    if direction == 'torch_to_flax':
        v, report = ptp.from_torch_state_dict(tm.state_dict(), like=like, rules=rules)
        assert report.ok and report.unexpected == ()
    else:
        v = like
        sd = ptp.to_torch_state_dict(v, rules, tensors=True)
        assert set(sd) == set(tm.state_dict())
        tm.load_state_dict(sd)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(net.apply)(v, x)), want, atol=1e-5)
    sd_back = ptp.to_torch_state_dict(v, rules)
    for k, t in tm.state_dict().items():
        np.testing.assert_array_equal(sd_back[k], t.numpy(), err_msg=k)
    # without the rules the packed projections do not match
    with pytest.raises(ptp.StructureError, match='in_proj_weight'):
        ptp.from_torch_state_dict(tm.state_dict(), like=like)


def test_a_missing_stacked_part_is_an_error():
    like = {'params': {'attn': {'query': {'kernel': np.zeros((4, 2, 2))}}}}
    msg = r"3 stacked parts; only 'params/attn/query/kernel'"
    with pytest.raises(ptp.StructureError, match=msg):
        ptp.to_torch_state_dict(like, ptp.attention_rules('params/attn', 'attn'))
