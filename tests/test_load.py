"""Tests for load_into: partial loading, renames, casts, shardings (_load)."""

from __future__ import annotations

import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_8_devices, trees
from hypothesis import given

import pytreeparams as ptp


class TinyViT(nn.Module):
    classes: int = 1000
    cls_token: bool = False
    pre_logits: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, name='embedding')(x)
        if self.cls_token:
            cls = self.param('cls', nn.initializers.zeros, (1, 8))
            x = x + cls
        x = nn.LayerNorm(name='encoder_norm')(nn.Dense(8, name='encoder_block')(x))
        if self.pre_logits:
            x = nn.tanh(nn.Dense(8, name='pre_logits')(x))
        return nn.Dense(self.classes, name='head')(x)


def test_finetune_load_new_head():
    x = jnp.ones((1, 4))
    ckpt = TinyViT(1000).init(jax.random.key(0), x)
    target = TinyViT(10).init(jax.random.key(1), x)
    with pytest.raises(ptp.StructureError) as e:
        ptp.load_into(ckpt, like=target)
    msg = str(e.value)
    assert "'params/head/bias' (target float32[10], source float32[1000])" in msg
    assert "'params/head/kernel' (target float32[8,10], source float32[8,1000])" in msg
    params, report = ptp.load_into(ckpt, like=target, skip='params/head/**')
    assert report.ok and report.skipped == ('params/head/bias', 'params/head/kernel')
    for p in ptp.paths(ckpt):
        if p.startswith('params/head'):
            assert ptp.get(params, p) is ptp.get(target, p)
        else:
            np.testing.assert_array_equal(ptp.get(params, p), ptp.get(ckpt, p))
    loose, rep = ptp.load_into(ckpt, like=target, strict=False)
    assert set(rep.shape_mismatch) == {'params/head/bias', 'params/head/kernel'}
    assert ptp.get(loose, 'params/head/kernel') is ptp.get(target, 'params/head/kernel')


def test_missing_cls_and_unexpected_pre_logits():
    x = jnp.ones((1, 4))
    ckpt = TinyViT(10, pre_logits=True).init(jax.random.key(0), x)
    target = TinyViT(10, cls_token=True).init(jax.random.key(1), x)
    params, report = ptp.load_into(ckpt, like=target, strict=False)
    assert report.missing == ('params/cls',)
    assert report.unexpected == ('params/pre_logits/bias', 'params/pre_logits/kernel')
    with pytest.raises(ptp.StructureError, match="missing 1 path in source: 'params/cls'"):
        ptp.load_into(ckpt, like=target)
    _, report = ptp.load_into(
        ckpt, like=target, rename=[('params/pre_logits/**', None)], skip='params/cls'
    )
    assert report.ok and report.dropped == ('params/pre_logits/bias', 'params/pre_logits/kernel')


def test_rename_with_groups_and_dtype_cast():
    target = {'blocks': {'0': {'w': jnp.zeros(2)}, '1': {'w': jnp.zeros(2)}}}
    source = {
        'layer_0': {'weight': jnp.ones(2)},
        'layer_1': {'weight': jnp.full(2, 2.0, jnp.bfloat16)},
    }
    rules = [('layer_*/weight', r'blocks/\1/w')]
    with pytest.raises(ptp.StructureError, match=r"dtype mismatch \(1\): 'blocks/1/w'"):
        ptp.load_into(source, like=target, rename=rules)
    params, report = ptp.load_into(source, like=target, rename=rules, cast=True)
    assert report.renamed == {'layer_0/weight': 'blocks/0/w', 'layer_1/weight': 'blocks/1/w'}
    assert params['blocks']['1']['w'].dtype == jnp.float32
    np.testing.assert_array_equal(params['blocks']['1']['w'], 2.0)
    with pytest.raises(ptp.StructureError, match='both map to'):
        ptp.load_into(source, like=target, rename=[('**', 'blocks/0/w')])


def test_abstract_target(mlp_params):
    abstract = jax.eval_shape(lambda: mlp_params)
    params, report = ptp.load_into(mlp_params, like=abstract)
    assert report.ok
    chex.assert_trees_all_equal(params, mlp_params)


@given(trees())
def test_load_into_self_is_identity(tree):
    params, report = ptp.load_into(tree, like=tree)
    assert report.ok and report.loaded == tuple(ptp.paths(tree))
    chex.assert_trees_all_equal(params, tree)


SHARDED = textwrap.dedent(
    """
    import os
    flags = os.environ.get('XLA_FLAGS', '')
    os.environ['XLA_FLAGS'] = flags + ' --xla_force_host_platform_device_count=8'
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import pytreeparams as ptp
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('d', 'm'))
    sh = {'w': NamedSharding(mesh, P('d', 'm')), 'b': NamedSharding(mesh, P('m'))}
    tree = {'w': jax.device_put(jnp.ones((16, 8)), sh['w']),
            'b': jax.device_put(jnp.ones(8), sh['b'])}
    new = ptp.reinit(tree, jax.random.key(0), {'**': jax.nn.initializers.normal(1.0)})
    for k in tree:
        assert new[k].sharding == tree[k].sharding, (k, new[k].sharding)
        assert not np.array_equal(np.asarray(new[k]), 1.0)
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in tree.items()}
    loaded, rep = ptp.load_into({k: np.asarray(v) for k, v in new.items()}, like=abstract)
    for k in tree:
        assert loaded[k].sharding == sh[k]
    print('OK')
    """
)


def test_sharded_reinit_and_load_keep_sharding():
    assert 'OK' in run_on_8_devices(SHARDED)


def test_python_scalar_source_takes_the_target_dtype():
    out, report = ptp.load_into(
        {'x': 5, 'i': 7}, like={'x': jnp.zeros(()), 'i': jnp.zeros((), jnp.int32)}
    )
    assert out['x'].dtype == jnp.float32 and float(out['x']) == 5.0 and report.ok
    assert out['i'].dtype == jnp.int32 and int(out['i']) == 7
    # a value the target dtype cannot hold is reported, not silently changed
    out, report = ptp.load_into({'i': 2.5}, like={'i': jnp.zeros((), jnp.int32)}, strict=False)
    assert not report.ok and 'i' in report.dtype_mismatch and int(out['i']) == 0


def test_old_spellings_warn_and_still_work():
    """The tree first, the target as like=: the old orders warn (DeprecationWarning
    showing the new call) and give the same result, for one release."""
    target = {'w': jnp.zeros(2), 'b': jnp.zeros(1)}
    source = {'w': jnp.ones(2), 'b': jnp.ones(1)}
    new, report = ptp.load_into(source, like=target)
    with pytest.warns(DeprecationWarning, match=r'ptp\.load_into\(source, like=target\)'):
        old, old_report = ptp.load_into(target, source)
    chex.assert_trees_all_equal(old, new)
    assert old_report == report
    with pytest.raises(TypeError, match='like='):
        ptp.load_into(source)
    with pytest.warns(DeprecationWarning, match=r'ptp\.map_with_path\(tree, fn\)'):
        assert ptp.map_with_path(lambda p, x: p, source) == ptp.map_with_path(
            source, lambda p, x: p
        )


def test_one_pattern_dialect_for_renames_and_rules():
    """A string is a glob everywhere (its wildcards are groups); a regex is a
    compiled re.Pattern; the old regex strings get a message naming both forms."""
    import re

    target = {'blocks': {'0': {'w': jnp.zeros(2)}, '1': {'w': jnp.zeros(2)}}}
    source = {'layer_0': {'weight': jnp.ones(2)}, 'layer_1': {'weight': 2 * jnp.ones(2)}}
    by_glob, r1 = ptp.load_into(source, like=target, rename=[('layer_*/weight', r'blocks/\1/w')])
    by_re, r2 = ptp.load_into(
        source, like=target, rename=[(re.compile(r'layer_(\d)/weight'), r'blocks/\1/w')]
    )
    assert r1.ok and r2.ok
    chex.assert_trees_all_equal(by_glob, by_re)
    moved, r3 = ptp.load_into({'old': source}, like={'new': source}, rename=[('old/**', r'new/\1')])
    assert r3.ok and r3.renamed['old/layer_0/weight'] == 'new/layer_0/weight'
    with pytest.raises(ValueError, match=r'or pass re\.compile\('):
        ptp.load_into(source, like=target, rename=[(r'layer_(\d+)/weight', r'blocks/\1/w')])
    with pytest.raises(ValueError, match='a glob everywhere'):
        ptp.to_torch_state_dict({'params': {'d': {'kernel': jnp.ones((2, 2))}}}, [(r'.*', 'x')])


@pytest.mark.parametrize('suffix', ['.safetensors', '.msgpack', ''])
def test_load_into_from_a_path_equals_loading_first(tmp_path, suffix):
    """``load_into(path, like=...)`` for every format (an Orbax folder without a
    suffix): the same tree and report as loading the file first, and a missing
    file is a FileNotFoundError naming it."""
    pretrained = TinyViT(classes=1000).init(jax.random.key(0), jnp.ones((1, 4)))
    target = TinyViT(classes=10).init(jax.random.key(1), jnp.ones((1, 4)))
    path = str(tmp_path / f'pretrained{suffix}')
    ptp.save(path, pretrained)
    got, report = ptp.load_into(path, like=target, skip='params/head/**')
    want, want_report = ptp.load_into(ptp.load(path), like=target, skip='params/head/**')
    chex.assert_trees_all_equal(got, want)
    assert report == want_report and report.ok
    assert report.skipped == ('params/head/bias', 'params/head/kernel')
    chex.assert_trees_all_equal(got['params']['embedding'], pretrained['params']['embedding'])
    assert type(got) is type(target)
    with pytest.raises(FileNotFoundError, match='missing'):
        ptp.load_into(str(tmp_path / f'missing{suffix}'), like=target)
