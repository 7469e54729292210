"""Tests for _shards: Hugging Face sharded safetensors checkpoints (issue 25.6),
read and written in transformers' and huggingface_hub's layout."""

from __future__ import annotations

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import run_on_8_devices
from flax.core import FrozenDict
from hypothesis import given, settings
from io_helpers import assert_bit_exact, file_trees
from safetensors.numpy import save_file

import pytreeparams as ptp
from pytreeparams._cli import main
from pytreeparams._files import _shards

INDEX = 'model.safetensors.index.json'


def _hf_checkpoint(folder, shards: list[dict[str, np.ndarray]]) -> str:
    """A sharded checkpoint built by hand as transformers writes one: dotted names,
    ``{"format": "pt"}`` headers, the index with total_size and weight_map."""
    os.makedirs(folder, exist_ok=True)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
        save_file(shard, os.path.join(folder, name), metadata={'format': 'pt'})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(a.nbytes for a in shard.values())
    index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
    with open(os.path.join(folder, INDEX), 'w') as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return str(folder)


def _torch_like_shards():
    rng = np.random.default_rng(0)
    layer = lambda i: {  # noqa: E731
        f'model.layers.{i}.weight': rng.standard_normal((4, 3)).astype(np.float32),
        f'model.layers.{i}.bias': rng.standard_normal(4).astype(np.float32),
    }
    return [layer(0), layer(1), {'lm_head.weight': np.ones((5, 4), ml_dtypes.bfloat16)}]


def test_a_transformers_checkpoint_loads_by_index_and_by_folder(tmp_path):
    shards = _torch_like_shards()
    folder = _hf_checkpoint(tmp_path / 'hf', shards)
    for path in (folder, os.path.join(folder, INDEX)):
        tree = ptp.load(path)
        chex.assert_trees_all_equal(
            tree['model']['layers']['1']['weight'], shards[1]['model.layers.1.weight']
        )
        assert tree['lm_head']['weight'].dtype == ml_dtypes.bfloat16
        assert ptp.paths(tree) == [
            'lm_head/weight',
            'model/layers/0/bias',
            'model/layers/0/weight',
            'model/layers/1/bias',
            'model/layers/1/weight',
        ]
        sd = ptp.read_state_dict(path)
        assert sorted(sd) == sorted(k for s in shards for k in s)
        np.testing.assert_array_equal(sd['model.layers.0.bias'], shards[0]['model.layers.0.bias'])


def test_select_opens_only_the_shards_it_needs(tmp_path, monkeypatch):
    folder = _hf_checkpoint(tmp_path / 'hf', _torch_like_shards())
    opened = []
    real = _shards.read_safetensors
    monkeypatch.setattr(
        _shards, 'read_safetensors', lambda p: opened.append(os.path.basename(p)) or real(p)
    )
    out = ptp.load(folder, select='model/layers/1/*')
    assert ptp.paths(out) == ['model/layers/1/bias', 'model/layers/1/weight']
    assert opened == ['model-00002-of-00003.safetensors']
    with pytest.raises(ptp.PathError, match="5 paths. Nearest paths: 'model/layers/1/weight'"):
        ptp.load(folder, select='model/layers/1/wieght')


def test_select_on_a_pytreeparams_checkpoint_keeps_keys_and_scalars(tmp_path, monkeypatch):
    tree = {
        'a': {'w': np.arange(64, dtype=np.float32)},
        'b': {'w': np.ones(64, np.float32)},
        'rng': jax.random.key(3),
        'step': 7,
    }
    path = str(tmp_path / 'ckpt' / INDEX)
    os.makedirs(os.path.dirname(path))
    ptp.save(path, tree, max_shard_size=256)
    opened = []
    real = _shards.read_safetensors
    monkeypatch.setattr(
        _shards, 'read_safetensors', lambda p: opened.append(os.path.basename(p)) or real(p)
    )
    out = ptp.load(path, select=['b/*', 'rng', 'step'])
    assert sorted(ptp.paths(out)) == ['b/w', 'rng', 'step']
    assert out['step'] == 7 and jax.dtypes.issubdtype(out['rng'].dtype, jax.dtypes.prng_key)
    chex.assert_trees_all_equal(jax.random.key_data(out['rng']), jax.random.key_data(tree['rng']))
    assert 'model-00001-of-00003.safetensors' not in opened  # 'a/w' alone in shard 1


def test_round_trip_keeps_containers_dtypes_and_ties(tmp_path):
    tree = {
        'enc': FrozenDict({'kernel': np.arange(300, dtype=np.float32).reshape(30, 10)}),
        'dec': {'kernel': np.arange(300, dtype=np.float32).reshape(30, 10)},
        'norm': (np.ones(10, ml_dtypes.bfloat16), np.zeros(10, np.int8)),
        'step': 5,
    }
    ties = ptp.Ties({'dec/kernel': 'enc/kernel'})
    folder = str(tmp_path / 'out')
    ptp.save(folder, tree, ties=ties, max_shard_size='1KB')
    files = sorted(os.listdir(folder))
    assert files == [
        'model-00001-of-00002.safetensors',
        'model-00002-of-00002.safetensors',
        INDEX,
    ]
    back = ptp.load(folder)
    chex.assert_trees_all_equal(back, tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    assert back['dec']['kernel'] is back['enc']['kernel']  # tied: stored once
    with open(os.path.join(folder, INDEX)) as f:
        index = json.load(f)
    assert set(index) == {'metadata', 'weight_map'}
    assert index['metadata']['total_size'] == 1200 + 20 + 10
    assert sorted(index['weight_map']) == ['enc/kernel', 'norm/0', 'norm/1']


def test_split_is_huggingface_hubs_rule(tmp_path):
    """Tensors in order; one above the limit alone (ahead of the open shard); a new
    shard when the next would pass the limit; one shard: model.safetensors, no index."""
    sd = {n: np.zeros(k, np.uint8) for n, k in [('a', 60), ('b', 50), ('c', 300), ('d', 40)]}
    folder = str(tmp_path / 'm')
    ptp.save(folder, sd, max_shard_size=100)
    with open(os.path.join(folder, INDEX)) as f:
        weight_map = json.load(f)['weight_map']
    assert weight_map == {
        'a': 'model-00001-of-00003.safetensors',
        'c': 'model-00002-of-00003.safetensors',
        'b': 'model-00003-of-00003.safetensors',
        'd': 'model-00003-of-00003.safetensors',
    }
    ptp.save(folder, sd)  # 5GB by default: one file; the shards and index are removed
    assert sorted(os.listdir(folder)) == ['model.safetensors']
    chex.assert_trees_all_equal(ptp.load(folder), sd)


@pytest.mark.parametrize(
    ('size', 'expected'), [(100, 100), ('5GB', 5 * 10**9), ('2GiB', 2 * 2**30), ('1.5 MB', 1500000)]
)
def test_shard_sizes(size, expected):
    assert _shards.shard_size(size) == expected


def test_bad_shard_sizes_and_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"max_shard_size='5 apples': give a positive number"):
        ptp.save(str(tmp_path / 'm'), {'a': np.ones(2)}, max_shard_size='5 apples')
    with pytest.raises(ValueError, match='max_shard_size is for sharded safetensors'):
        ptp.save(str(tmp_path / 'p.msgpack'), {'a': np.ones(2)}, max_shard_size='1GB')
    assert os.listdir(tmp_path) == []


def _index(folder, weight_map) -> str:
    path = os.path.join(folder, INDEX)
    with open(path, 'w') as f:
        json.dump({'metadata': {'total_size': 0}, 'weight_map': weight_map}, f)
    return path


def test_bad_indexes_give_format_errors(tmp_path):
    save_file({'w': np.ones(2, np.float32)}, str(tmp_path / 'a.safetensors'))
    cases = [
        ({'w': '../a.safetensors'}, r"tensor 'w' is in '../a.safetensors'; a shard is a"),
        ({'w': '/etc/a.safetensors'}, 'no absolute path'),
        ({'w': 'a.bin'}, 'a shard is a .safetensors file'),
        ({'w': 'gone.safetensors'}, "names the shard 'gone.safetensors', which is missing"),
        ({'v': 'a.safetensors'}, "holds the tensor 'w', which .* does not name"),
        ({'w': 'a.safetensors', 'v': 'a.safetensors'}, "puts 'v' in 'a.safetensors', which"),
    ]
    for weight_map, message in cases:
        path = _index(tmp_path, weight_map)
        with pytest.raises(ptp.FormatError, match=message):
            ptp.load(path)
    with open(path, 'w') as f:
        f.write('{"weight_map": [')
    with pytest.raises(ptp.FormatError, match='is not a valid safetensors index: not JSON'):
        ptp.read_state_dict(path)


def test_from_torch_state_dict_and_load_into_read_shards(tmp_path):
    import flax.linen as nn

    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    v = net.init(jax.random.key(0), jnp.ones((1, 4)))
    sd = ptp.to_torch_state_dict(v)
    folder = str(tmp_path / 'torch')
    ptp.save(folder, sd, max_shard_size=100)
    assert len(os.listdir(folder)) > 2
    back, report = ptp.from_torch_state_dict(folder, like=v)
    assert report.ok
    chex.assert_trees_all_equal(back, v)
    zeros = jax.tree.map(jnp.zeros_like, sd)
    filled, report = ptp.load_into(folder, like=zeros)
    assert report.ok and len(report.loaded) == 4
    chex.assert_trees_all_equal(filled, jax.tree.map(np.asarray, sd))


def test_cli_summary_of_a_sharded_checkpoint(tmp_path, capsys):
    folder = _hf_checkpoint(tmp_path / 'hf', _torch_like_shards())
    assert main(['summary', folder, '--no-stats', '--plain']) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{folder}: 5 leaves, 52 parameters')
    assert 'lm_head' in out and 'bfloat16[5,4]' in out


def test_huggingface_hub_reads_and_writes_the_same_layout(tmp_path):
    pytest.importorskip('huggingface_hub')
    torch = pytest.importorskip('torch')
    from huggingface_hub import load_torch_model, save_torch_state_dict

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    os.mkdir(tmp_path / 'hub')
    save_torch_state_dict(model.state_dict(), str(tmp_path / 'hub'), max_shard_size=100)
    assert INDEX in os.listdir(tmp_path / 'hub')
    sd = ptp.read_state_dict(str(tmp_path / 'hub'))
    for k, t in model.state_dict().items():
        np.testing.assert_array_equal(sd[k], t.numpy())
    ours = {k: t.detach().numpy() * 2 for k, t in model.state_dict().items()}
    ptp.save(str(tmp_path / 'ours'), ours, max_shard_size=100)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    load_torch_model(other, str(tmp_path / 'ours'))  # strict: every key found
    for k, t in other.state_dict().items():
        np.testing.assert_array_equal(t.numpy(), ours[k])
    from huggingface_hub import split_torch_state_dict_into_shards

    as_torch = {k: torch.from_numpy(v) for k, v in ours.items()}
    split = split_torch_state_dict_into_shards(as_torch, max_shard_size=100)
    with open(tmp_path / 'ours' / INDEX) as f:
        assert json.load(f)['weight_map'] == split.tensor_to_filename


_GLOBAL_LIKE = """
import os, sys, json
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pytreeparams as ptp
from pytreeparams._files import _shards

folder = sys.argv[1]
w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
ptp.save(folder, {'w': w, 'b': np.ones(8, np.float32)}, max_shard_size=256)
copied = []
real = _shards.read_slice
_shards.read_slice = lambda t, i: copied.append(real(t, i).nbytes) or real(t, i)
explicit = jax.make_mesh((4, 2), ('x', 'y'))
auto = Mesh(np.array(jax.devices()).reshape(4, 2), ('x', 'y'))
for mesh in (explicit, auto):
    for spec, copies in [(P('x', 'y'), 8), (P('x'), 4), (P(), 1), (P(None, 'y'), 2)]:
        like = {'w': jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, spec)),
                'b': jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh, P()))}
        copied.clear()
        out = ptp.load(folder, like=like)
        assert out['w'].sharding == like['w'].sharding, (out['w'].sharding, spec)
        np.testing.assert_array_equal(np.asarray(out['w']), w)
        # each distinct slice read once: the whole tensor once, whatever the replication
        assert len(copied) == copies + 1 and sum(copied) == w.nbytes + 32, (spec, copied)
        cast = ptp.load(folder, like=jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16, sharding=s.sharding), like),
            cast=True)
        assert cast['w'].dtype == jnp.bfloat16 and cast['w'].sharding == like['w'].sharding
print('OK')
"""


def test_a_sharded_like_reads_each_distinct_slice_once(tmp_path):
    out = run_on_8_devices(_GLOBAL_LIKE, str(tmp_path / 'ckpt'))
    assert out.strip().endswith('OK')


def test_an_index_path_always_gets_its_index_and_names_the_shards(tmp_path):
    path = str(tmp_path / 'unet.safetensors.index.json')
    tree = {'w': np.arange(6, dtype=np.float32)}
    ptp.save(path, tree)  # 5GB by default: one shard, still indexed
    assert sorted(os.listdir(tmp_path)) == [
        'unet-00001-of-00001.safetensors',
        'unet.safetensors.index.json',
    ]
    chex.assert_trees_all_equal(ptp.load(str(tmp_path)), tree)  # the folder's only index
    with pytest.raises(FileNotFoundError, match='does not exist; create it first'):
        ptp.save(str(tmp_path / 'no' / 'm.safetensors.index.json'), tree, max_shard_size=8)


def test_a_folder_with_one_safetensors_file_is_read_as_huggingface_hub_does(tmp_path):
    save_file({'net.w': np.ones(3, np.float32)}, str(tmp_path / 'weights.safetensors'))
    (tmp_path / 'config.json').write_text('{}')
    chex.assert_trees_all_equal(ptp.load(str(tmp_path)), {'net': {'w': np.ones(3, np.float32)}})
    save_file({'v': np.ones(1, np.float32)}, str(tmp_path / 'other.safetensors'))
    with pytest.raises(ptp.FormatError, match='is not an Orbax checkpoint'):
        ptp.load(str(tmp_path))  # two files, no index: which one is not guessed


@settings(max_examples=25, deadline=None)
@given(file_trees())
def test_sharded_round_trip_bit_exact(tmp_path_factory, tree):
    folder = str(tmp_path_factory.mktemp('s') / 'ckpt')
    ptp.save(folder, tree, max_shard_size=64)
    back = ptp.load(folder)
    assert_bit_exact(back, tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)


def test_a_tensor_the_structure_names_but_no_shard_holds_is_an_error(tmp_path):
    folder = str(tmp_path / 'ckpt')
    ptp.save(
        folder, {'a': np.ones(40, np.float32), 'b': np.zeros(40, np.float32)}, max_shard_size=200
    )
    path = os.path.join(folder, INDEX)
    with open(path) as f:
        index = json.load(f)
    meta = json.loads(index['metadata']['pytreeparams'])
    meta['structure']['k'].append(['c', {'t': 'array', 's': [3]}])
    index['metadata']['pytreeparams'] = json.dumps(meta)
    with open(path, 'w') as f:
        json.dump(index, f)
    with pytest.raises(ptp.FormatError, match="names a tensor 'c' the file does not hold"):
        ptp.load(folder)
    with pytest.raises(ptp.FormatError, match="names a tensor 'c' the file does not hold"):
        ptp.load(folder, select='a')
