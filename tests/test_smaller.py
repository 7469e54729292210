"""Smaller items of issue 26.18: a regex where a glob is expected, update's
shape check, summary's call keywords, GradStats' key errors."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

import pytreeparams as ptp

TREE = {'dense': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}}
REGEX_HINT = (
    "'.*kernel' is a regular expression, but a string pattern is a glob everywhere in "
    "pytreeparams: write it as a glob ('**/kernel'), or pass re.compile('.*kernel')."
)


@pytest.mark.parametrize(
    'call',
    [
        lambda: ptp.select(TREE, '.*kernel'),
        lambda: ptp.mask(TREE, '.*kernel'),
        lambda: ptp.update(TREE, '.*kernel', lambda x: x),
        lambda: ptp.labels(TREE, {'.*kernel': 'decay', '**': 'none'}),
        lambda: ptp.summary(TREE, select='.*kernel'),
    ],
    ids=['select', 'mask', 'update', 'labels', 'summary'],
)
def test_a_regex_string_gets_the_glob_hint(call):
    with pytest.raises(ptp.PathError, match='matches none') as e:
        call()
    assert REGEX_HINT in str(e.value)


def test_a_glob_or_a_compiled_regex_gets_no_regex_hint():
    with pytest.raises(ptp.PathError) as e:
        ptp.select(TREE, re.compile('.*kern'))
    assert 'regular expression' not in str(e.value)
    assert list(ptp.select(TREE, re.compile('.*kernel'))) == ['dense/kernel']


def test_update_refuses_a_new_shape_as_set_does():
    with pytest.raises(
        ptp.StructureError,
        match=r"update: fn changed the shape of 'dense/bias' from \(3,\) to \(1, 3\), as "
        r'ptp.set refuses to; pass check=False',
    ):
        ptp.update(TREE, '**/bias', lambda x: x[None])
    with pytest.raises(ptp.StructureError):
        ptp.set(TREE, 'dense/bias', jnp.zeros((1, 3)))
    out = ptp.update(TREE, '**/bias', lambda x: x[None], check=False)
    assert out['dense']['bias'].shape == (1, 3)
    # a dtype may change: casting by pattern
    out = jax.jit(lambda t: ptp.update(t, '**', lambda x: x.astype(jnp.bfloat16)))(TREE)
    assert out['dense']['kernel'].dtype == jnp.bfloat16


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        return nn.Dropout(0.5, deterministic=not train)(nn.Dense(2)(x))


def test_summary_takes_the_call_keywords_as_nn_tabulate_does():
    x = jnp.ones((1, 3))
    s = ptp.summary(Net(), x, train=False)
    assert s.calls[0].inputs == 'float32[1,3], train=False'
    assert s.totals.size == 8
    with pytest.raises(TypeError, match="'train' is given both as a keyword and in call_kwargs="):
        ptp.summary(Net(), x, train=False, call_kwargs={'train': True})
    with pytest.raises(TypeError, match='are for a flax module'):
        ptp.summary(TREE, train=False)


def test_grad_stats_key_error_says_did_you_mean():
    gs = ptp.grad_stats({'w': jnp.ones(2)})
    with pytest.raises(KeyError, match=r"no statistic 'grad_nrom'.*Did you mean 'grad_norm'\?"):
        gs['grad_nrom']
    assert float(gs['grad_norm'][0]) == pytest.approx(2**0.5)
