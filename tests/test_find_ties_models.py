"""find_ties on real state_dicts (issue 26.6): shared storage is a tie whatever
it holds, equal small constants are not, and the source is the tensor a model
is built from (the tree's own order, or the caller's preference)."""

import numpy as np
import pytest

import pytreeparams as ptp

torch = pytest.importorskip('torch')


def _bert_like():
    """A state_dict as BERT's: the decoder tied to the word embeddings and its
    bias to the prediction bias (zeros at init), BatchNorm-style counters."""
    emb = torch.randn(8, 4)
    bias = torch.zeros(8)
    return {
        'embeddings.word_embeddings.weight': emb,
        'embeddings.LayerNorm.weight': torch.ones(4),
        'encoder.bn1.num_batches_tracked': torch.tensor(0),
        'encoder.bn2.num_batches_tracked': torch.tensor(0),
        'encoder.dense.bias': torch.zeros(8),
        'cls.predictions.bias': bias,
        'cls.predictions.decoder.weight': emb,
        'cls.predictions.decoder.bias': bias,
        'cls.predictions.transform.LayerNorm.weight': torch.ones(4),
    }


def test_shared_storage_is_a_tie_and_equal_constants_are_not():
    groups = ptp.find_ties(_bert_like())
    assert groups == [
        ptp.TieGroup('embeddings.word_embeddings.weight', ('cls.predictions.decoder.weight',)),
        ptp.TieGroup('cls.predictions.bias', ('cls.predictions.decoder.bias',)),
    ]
    # the ties keep the embedding: untie drops the head, tie rebuilds it
    ties = groups[0].to_ties()
    flat = {k: v.numpy() for k, v in _bert_like().items()}
    assert 'embeddings.word_embeddings.weight' in ptp.untie(flat, ties)


def test_views_of_one_buffer_tie_and_equal_counters_group_only_when_asked():
    buf = np.zeros(6, np.float32)
    zero = np.zeros((), np.int64)
    tree = {'b': buf[:3], 'a': buf[:3], 'c': buf[3:], 'n1': zero.copy(), 'n2': zero.copy()}
    assert ptp.find_ties(tree) == [ptp.TieGroup('b', ('a',))]
    both = ptp.find_ties(tree, constants=True)
    assert both == [ptp.TieGroup('b', ('a', 'c')), ptp.TieGroup('n1', ('n2',))]


def test_the_caller_prefers_a_source_and_transposes_follow_it():
    w = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    tree = {'head': {'kernel': w.T.copy()}, 'wte': {'embedding': w.copy()}, 'b': w.copy()}
    assert ptp.find_ties(tree, transposed=True) == [
        ptp.TieGroup('head/kernel', (), ('wte/embedding', 'b'))
    ]
    assert ptp.find_ties(tree, transposed=True, prefer='wte/**') == [
        ptp.TieGroup('wte/embedding', ('b',), ('head/kernel',))
    ]
