"""Orbax folders hardened: names that would collide, reads during a save, folders
that are not checkpoints, training state as ``like``, steps, PRNG keys with
``select=``, NNX states both ways, URLs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams._files import _orbax

ocp = pytest.importorskip('orbax.checkpoint')


# 23.1: Orbax names arrays by their keys joined with '.'
@pytest.mark.parametrize(
    'tree',
    [
        {'a.b': np.array([1.0]), 'a': {'b': np.array([2.0])}},
        {'encoder.layer': {'weight': 5}, 'encoder': {'layer.weight': 7}},
    ],
)
def test_dotted_key_beside_nested_keys_is_refused_before_writing(tmp_path, tree):
    with pytest.raises(
        ptp.StructureError,
        match=r"would be stored under one Orbax name 'a\.b'|"
        r"one Orbax name 'encoder\.layer\.weight'",
    ) as e:
        ptp.save(tmp_path / 'ck', tree)
    assert 'nothing was written' in str(e.value)
    assert os.listdir(tmp_path) == []
    ptp.save(tmp_path / 'ok.msgpack', tree)  # a format that keeps both names
    chex.assert_trees_all_equal(ptp.load(tmp_path / 'ok.msgpack'), tree)


# 23.4: a read while another process saves the same path sees one checkpoint
def _tree(v: int) -> dict:
    return {'w': np.full(4, float(v), np.float32), 'step': v, 'rng': jax.random.key(v)}


def _assert_one_checkpoint(t: dict) -> None:
    v = t['step']
    np.testing.assert_array_equal(t['w'], np.full(4, float(v), np.float32))
    np.testing.assert_array_equal(
        jax.random.key_data(t['rng']), jax.random.key_data(jax.random.key(v))
    )


def test_load_while_a_save_replaces_the_folder_reads_one_checkpoint(tmp_path, monkeypatch):
    """The save lands between the metadata read and the array read (made certain
    here): the load reads again and gives the new checkpoint whole, never its
    arrays with the old scalars and key metadata."""
    ck = str(tmp_path / 'ck')
    ptp.save(ck, _tree(1))
    real = ocp.StandardCheckpointer.restore
    saved = []

    def restore_after_a_save(self, *args, **kwargs):
        if not saved:
            saved.append(True)
            ptp.save(ck, _tree(2))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointer, 'restore', restore_after_a_save)
    t = ptp.load(ck)
    assert saved and t['step'] == 2
    _assert_one_checkpoint(t)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, jax, pytreeparams as ptp
    for i in range(int(sys.argv[2])):
        v = 3 + i
        ptp.save(sys.argv[1], {'w': np.full(4, float(v), np.float32), 'step': v,
                               'rng': jax.random.key(v)})
    print('DONE')
    """
)


def test_load_during_saves_from_another_process_never_tears(tmp_path):
    """A writer process saves 6 checkpoints while this one reads (bounded loops)."""
    ck = str(tmp_path / 'ck')
    ptp.save(ck, _tree(2))
    writer = subprocess.Popen(
        [sys.executable, '-c', WRITER, ck, '6'], stdout=subprocess.PIPE, text=True
    )
    reads = 0
    try:
        while writer.poll() is None and reads < 400:
            _assert_one_checkpoint(ptp.load(ck))
            reads += 1
    finally:
        out = writer.communicate(timeout=300)[0]
    assert 'DONE' in out and reads > 0
    t = ptp.load(ck)
    assert t['step'] == 8
    _assert_one_checkpoint(t)
    assert sorted(os.listdir(tmp_path)) == ['ck']


# 23.5: only a real (finished) Orbax checkpoint is replaced
@pytest.mark.parametrize('name', ['_sharding', 'pytreeparams.json', '_METADATA'])
def test_save_refuses_a_folder_of_user_files_with_one_checkpoint_name(tmp_path, name):
    results = tmp_path / 'results'
    results.mkdir()
    (results / 'thesis.txt').write_text('years of work')
    (results / name).write_text('{}')
    with pytest.raises(FileExistsError, match='not a checkpoint.*nothing was written'):
        ptp.save(results, {'w': np.ones(2)})
    assert sorted(os.listdir(results)) == sorted(['thesis.txt', name])
    assert (results / 'thesis.txt').read_text() == 'years of work'


def test_a_backup_that_cannot_be_removed_is_reported_with_its_path(tmp_path, monkeypatch):
    ck = str(tmp_path / 'ck')
    ptp.save(ck, {'w': np.zeros(2)})

    def fail(path):
        raise OSError('injected: permission denied')

    monkeypatch.setattr(_orbax, '_rmtree', fail)
    with pytest.warns(
        RuntimeWarning,
        match=r"moved aside to '.*ck\.old-ck\..*could not be "
        'removed.*remove it by hand',
    ):
        ptp.save(ck, {'w': np.ones(2)})
    monkeypatch.undo()
    np.testing.assert_array_equal(ptp.load(ck)['w'], np.ones(2))
    assert any(n.startswith('ck.old-') for n in os.listdir(tmp_path))


# 23.13: training state as `like`
def test_load_like_an_optax_state_and_python_scalars(tmp_path):
    import optax

    params = {'w': jnp.ones((2, 3)), 'b': jnp.arange(3.0)}
    opt = optax.adam(1e-3).init(params)
    ck = tmp_path / 'opt'
    ptp.save(ck, opt)
    back = ptp.load(ck, like=opt)
    assert jax.tree.structure(back) == jax.tree.structure(opt)
    chex.assert_trees_all_equal(back, opt)
    state = {'params': params, 'step': 7, 'none': None, 'empty': (), 'nothing': {}}
    ptp.save(tmp_path / 'st', state)
    back = ptp.load(tmp_path / 'st', like=state)
    assert back['step'] == 7 and back['none'] is None and back['empty'] == ()
    assert back['nothing'] == {}
    chex.assert_trees_all_equal(back['params'], params)
    abstract = jax.eval_shape(lambda: opt)  # abstract targets too
    chex.assert_trees_all_equal(ptp.load(ck, like=abstract), opt)


# 23.15: steps are ints
def test_step_of_a_wrong_type_is_a_clear_error(tmp_path):
    root = str(tmp_path / 'mgr')
    with ocp.CheckpointManager(root) as mgr:
        for s in (1, 2):
            mgr.save(s, args=ocp.args.StandardSave({'w': jnp.ones(2) * s}))
        mgr.wait_until_finished()
    with pytest.raises(TypeError, match=r"step='2' is a str; a step is an int, e.g. step=2"):
        ptp.load(root, step='2')
    with pytest.raises(TypeError, match='step=True is a bool; a step is an int'):
        ptp.load(root, step=True)
    with pytest.raises(ValueError, match='step=-1 is negative'):
        ptp.load(root, step=-1)
    assert ptp.load(root, step=np.int64(1))['w'].tolist() == [1.0, 1.0]


# 26.10: select= on a folder holding PRNG keys
def test_select_without_every_prng_key(tmp_path):
    ck = tmp_path / 'ck'
    tree = {'w': jnp.arange(3.0), 'rng': jax.random.key(0), 'more': {'k': jax.random.key(1)}}
    ptp.save(ck, tree)
    assert ptp.paths(ptp.load(ck, select='w')) == ['w']
    got = ptp.load(ck, select='more/**')
    assert jax.dtypes.issubdtype(got['more']['k'].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(got['more']['k']), jax.random.key_data(tree['more']['k'])
    )


# 26.11: NNX states written by plain Orbax, as the Flax NNX guide does
def _nnx_model():
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(2, 3, rngs=rngs)
            self.l2 = nnx.Linear(3, 1, rngs=rngs)

    return nnx, Model


def test_a_plain_orbax_nnx_checkpoint_reads_with_like_select_and_load_into(tmp_path):
    nnx, Model = _nnx_model()
    model = Model(nnx.Rngs(0))
    state = nnx.state(model)
    ck = str(tmp_path / 'nnx')
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ck, state)
    abstract = nnx.state(nnx.eval_shape(lambda: Model(nnx.Rngs(1))))
    back = ptp.load(ck, like=abstract)
    chex.assert_trees_all_equal(ptp.flatten(back), ptp.flatten(state))
    assert sorted(ptp.paths(ptp.load(ck, select='**/kernel'))) == ['l1/kernel', 'l2/kernel']
    assert sorted(ptp.paths(ptp.load(ck))) == ptp.paths(state)
    fresh = nnx.state(Model(nnx.Rngs(5)))
    for source in (ptp.load(ck), ck):
        into, report = ptp.load_into(source, like=fresh)
        assert report.ok, report
        chex.assert_trees_all_equal(ptp.flatten(into), ptp.flatten(state))


# URLs reach Orbax unchanged
class _FakeURL:
    """epath.Path for a bucket that holds one folder (``gs://bucket``) and maybe a
    checkpoint ``gs://bucket/ckpt``."""

    files: set[str] = set()

    def __init__(self, p):
        self.p = str(p)

    def exists(self):
        return self.p in {'gs://bucket'} | self.files

    def is_dir(self):
        return self.p in {'gs://bucket', 'gs://bucket/ckpt'} and self.exists()

    def iterdir(self):
        return iter(())


def test_urls_reach_orbax_unchanged(monkeypatch):
    seen = []

    def record(self, directory, *args, **kwargs):
        seen.append(directory)
        raise OSError('injected: stop here')

    monkeypatch.setattr(_orbax, '_epath', _FakeURL)
    monkeypatch.setattr(ocp.StandardCheckpointer, 'save', record)
    monkeypatch.setattr(ocp.StandardCheckpointer, 'restore', record)
    with pytest.raises(OSError, match='injected'):
        ptp.save('gs://bucket/ckpt', {'w': np.ones(2)})
    assert isinstance(seen[0], str) and seen[0].startswith('gs://bucket/.ckpt.'), seen
    monkeypatch.setattr(_FakeURL, 'files', {'gs://bucket/ckpt', 'gs://bucket/ckpt/_METADATA'})
    with pytest.raises(ptp.FormatError, match='injected'):
        ptp.load('gs://bucket/ckpt')
    assert seen[1] == 'gs://bucket/ckpt', seen
    with pytest.raises(ptp.FormatError, match='only Orbax folders are read and written at a URL'):
        ptp.save('gs://bucket/model.safetensors', {'w': np.ones(2)})


def test_a_url_without_its_filesystem_is_a_clear_error(monkeypatch):
    """No filesystem for s3:// here (epath: tensorflow's has none, fsspec's needs s3fs)."""
    if __import__('importlib').util.find_spec('s3fs') is not None:
        pytest.skip('s3fs is installed')
    with pytest.raises(
        ptp.FormatError,
        match=r"save: cannot reach 's3://bucket/ckpt' \(\w+Error: .*\)\. Paths with a scheme go "
        r"unchanged to Orbax through etils.epath, which needs a filesystem for 's3://' installed",
    ):
        ptp.save('s3://bucket/ckpt', {'w': np.ones(2)})
    with pytest.raises(ptp.FormatError, match="load: cannot reach 's3://bucket/ckpt"):
        ptp.load('s3://bucket/ckpt')


def test_plain_orbax_restores_ptp_folders_of_nnx_and_optax_states(tmp_path):
    """ptp's folders in Orbax's own layout: StandardCheckpointer().restore with an
    abstract target, as the Flax NNX and optax guides do, and ptp reads them back."""
    import optax

    nnx, Model = _nnx_model()
    state = nnx.state(Model(nnx.Rngs(0)))
    ptp.save(tmp_path / 'nnx', state)
    abstract = nnx.state(nnx.eval_shape(lambda: Model(nnx.Rngs(1))))
    with ocp.StandardCheckpointer() as ckptr:
        back = ckptr.restore(tmp_path / 'nnx', abstract)
    chex.assert_trees_all_equal(ptp.flatten(back), ptp.flatten(state))
    assert ptp.paths(ptp.load(tmp_path / 'nnx')) == ptp.paths(state)
    chex.assert_trees_all_equal(
        ptp.flatten(ptp.load(tmp_path / 'nnx', like=abstract)), ptp.flatten(state)
    )
    assert ptp.paths(ptp.load(tmp_path / 'nnx', select='**/kernel')) == ['l1/kernel', 'l2/kernel']

    params = {'w': jnp.ones((2, 3)), 'b': jnp.arange(3.0)}
    opt = {'opt': optax.adam(1e-3).init(params), 'step': 3, 'layers': [params, (params['b'],)]}
    ptp.save(tmp_path / 'opt', opt)
    with ocp.StandardCheckpointer() as ckptr:
        back = ckptr.restore(tmp_path / 'opt', jax.eval_shape(lambda: opt))
    assert jax.tree.structure(back) == jax.tree.structure(opt)
    chex.assert_trees_all_equal(back, opt)
    chex.assert_trees_all_equal(ptp.load(tmp_path / 'opt', like=opt), opt)


# 25.6: the command line lists an Orbax folder from its metadata
def test_cli_summary_of_an_orbax_folder_reads_metadata_or_only_the_selection(
    tmp_path, monkeypatch, capsys
):
    from pytreeparams._cli import main

    ck = str(tmp_path / 'ck')
    ptp.save(ck, {'enc': {'w': np.ones((3, 4), np.float32)}, 'dec': {'w': np.zeros(5)}})

    def no_restore(*args, **kwargs):
        raise AssertionError('arrays were restored')

    monkeypatch.setattr(ocp.StandardCheckpointer, 'restore', no_restore)
    real = ocp.PyTreeCheckpointer.restore
    monkeypatch.setattr(ocp.PyTreeCheckpointer, 'restore', no_restore)
    assert main(['summary', ck, '--no-stats', '--plain']) == 0
    out = capsys.readouterr().out
    assert '2 leaves, 17 parameters' in out and 'float32[3,4]' in out and 'float64[5]' in out
    monkeypatch.setattr(ocp.PyTreeCheckpointer, 'restore', real)  # the partial restore only
    assert main(['summary', ck, '--select', 'enc/**', '--plain']) == 0
    out = capsys.readouterr().out
    assert '1 leaf, 12 parameters' in out and 'enc/w' in out and 'dec/w' not in out


def test_a_failed_save_says_where_what_it_could_not_clean_up_is(tmp_path, monkeypatch):
    ck = str(tmp_path / 'ck')
    ptp.save(ck, {'w': np.zeros(2)})
    real_move = _orbax._move

    def move(src, dst):  # the new folder cannot go in, nor the old one back
        if os.path.basename(src).startswith(('.ck.', 'ck.old-')):
            raise OSError('injected: read-only')
        return real_move(src, dst)

    monkeypatch.setattr(_orbax, '_move', move)
    monkeypatch.setattr(_orbax, '_rmtree', lambda p: (_ for _ in ()).throw(OSError('busy')))
    with (
        pytest.warns(RuntimeWarning, match=r"temporary folder '.*/\.ck\.[0-9a-f]{8}' could not"),
        pytest.raises(OSError, match=r"previous one could not be moved back: it is at '.*ck\.old-"),
    ):
        ptp.save(ck, {'w': np.ones(2)})
    monkeypatch.undo()
    backup = next(n for n in os.listdir(tmp_path) if n.startswith('ck.old-'))
    np.testing.assert_array_equal(ptp.load(tmp_path / backup)['w'], np.zeros(2))
