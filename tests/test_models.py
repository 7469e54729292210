"""Real-model shapes of trees (issue 26): NNX Variables shared by two modules,
parameters apart from other state, in summaries, counts, calls and the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import pytreeparams as ptp
from pytreeparams._cli import main


class TiedHead(nnx.Module):
    """A head kernel that is the embedding's own Variable."""

    def __init__(self, rngs):
        self.emb = nnx.Embed(10, 5, rngs=rngs)
        self.head = nnx.Linear(10, 5, use_bias=False, rngs=rngs)
        self.head.kernel = self.emb.embedding


class SharedModule(nnx.Module):
    """One Linear under two names, called twice on other shapes."""

    def __init__(self, rngs):
        self.emb = nnx.Linear(20, 20, use_bias=False, rngs=rngs)
        self.head = self.emb

    def __call__(self, x):
        return self.head(self.emb(x)[None])


def _state_size(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model)))


def test_a_shared_variable_counts_once_as_nnx_state_does():
    m = TiedHead(nnx.Rngs(0))
    assert _state_size(m) == 50
    assert ptp.count(m) == 50 and ptp.nbytes(m) == 200
    s = ptp.summary(m)
    assert s.totals.size == 50 and s.totals.leaves == 1
    assert [(r.path, r.alias, r.note) for r in s.rows] == [
        ('emb/embedding', False, ''),
        ('head/kernel', True, 'alias of emb/embedding'),
    ]
    m = SharedModule(nnx.Rngs(0))
    assert _state_size(m) == 400
    assert ptp.count(m) == 400 and ptp.nbytes(m) == 1600
    assert ptp.summary(m).totals.size == 400


def test_a_shared_module_is_one_call_that_owns_its_variables_once():
    s = ptp.summary(SharedModule(nnx.Rngs(0)), jnp.ones((2, 20)))
    assert [(c.path, c.module, c.inputs, c.params.size) for c in s.calls] == [
        ('', 'SharedModule', 'float32[2,20]', 0),
        ('emb', 'Linear', 'float32[2,20]', 400),
    ]
    assert s.totals.size == 400


def test_one_array_in_two_places_is_two_leaves_as_jax_and_optax_see_it():
    w = np.ones((3, 4), np.float32)
    tree = {'a': w, 'b': w, 'n': 1, 'm': 1}
    assert ptp.count(tree) == 26 and ptp.summary(tree).totals.size == 26


class LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


def test_summary_totals_are_the_parameters_and_other_state_apart():
    x = jnp.ones((2, 4))
    variables = LinenBN().init(jax.random.key(0), x)
    s = ptp.summary(variables)
    assert s.totals.size == 15 + 6 == ptp.count(variables['params'])
    assert s.state.size == 6 and s.state.leaves == 2
    assert 'other state' in str(s) and '6 values of other state' in repr(s)
    assert s.to_dict()['total_state/size'] == 6.0 and s.to_dict()['total/size'] == 21.0
    # the per-call row of the BatchNorm: scale and bias; mean and var apart
    s = ptp.summary(LinenBN(), x)
    bn = {c.path: c for c in s.calls}['BatchNorm_0']
    assert (bn.params.size, bn.params.mean, bn.params.std) == (6, 0.5, 0.5)
    assert (bn.state.size, bn.state.mean) == (6, 0.5)
    var = variables['batch_stats']['BatchNorm_0']['var']
    assert bn.state.min == 0.0 and bn.state.max == float(var.max())
    assert s.totals.size == 21 and s.state.size == 6
    assert str(s).splitlines()[0].split()[-1] == 'state'


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.lin(x)))


def test_nnx_rng_and_batch_stats_are_other_state_as_nnx_tabulate_has_them():
    m = NNXModel(nnx.Rngs(0))
    params = nnx.state(m, nnx.Param)
    for tree in (m, nnx.state(m)):
        s = ptp.summary(tree)
        assert s.totals.size == ptp.count(params) == 24
        assert s.state.size == 10 and s.state.leaves == 4  # mean, var, key, count
    s = ptp.summary(m, jnp.ones((2, 3)))
    assert {c.path: c.params.size for c in s.calls} == {'': 0, 'lin': 16, 'bn': 8, 'drop': 0}
    assert {c.path: c.state and c.state.size for c in s.calls}['bn'] == 8


def test_cli_counts_parameters_of_an_nnx_file_and_a_tie_once(tmp_path, capsys):
    path = str(tmp_path / 'nnx.safetensors')
    ptp.save(path, nnx.state(NNXModel(nnx.Rngs(0))))
    assert main(['summary', path, '--plain']) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(': 8 leaves, 24 parameters, 10 values of other state '
                          '(running statistics, counters)')  # fmt: skip
    path = str(tmp_path / 'tied.safetensors')
    tree = {'wte': np.ones((10, 4), np.float32), 'head': np.ones((10, 4), np.float32)}
    wte = tree['wte']
    for head, source in ((wte, 'wte'), (wte.T, ('wte', ptp.transpose))):
        ptp.save(path, {'wte': wte, 'head': head}, ties=ptp.Ties({'head': source}))
        assert main(['summary', path, '--plain']) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].endswith(': 1 leaf, 40 parameters')
        assert 'alias of wte' in out


@pytest.mark.parametrize('path', ['bn/mean', 'drop/rngs/key', 'rngs/default/count'])
def test_nnx_state_in_files_is_told_by_its_path(path):
    from pytreeparams._rows import is_state_path

    assert is_state_path(path) and not is_state_path('params/' + path)
