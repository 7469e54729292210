"""Each fact worded once (issue 27): missing/unexpected paths, quoted lists,
``dtype[shape]``, "did you mean"; no message edited after it is built."""

from __future__ import annotations

import ast
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import pytreeparams as ptp
from pytreeparams._messages import path_differences

ROOT = pathlib.Path(ptp.__file__).parent


def test_missing_and_unexpected_paths_read_the_same_everywhere(tmp_path):
    """grad_stats, load(like=), load_into's report and unflatten all say
    ``missing 1 path: 'b'`` (the one builder, ``_messages.path_differences``)."""
    msgs = []
    with pytest.raises(ptp.StructureError) as e:
        ptp.grad_stats({'a': jnp.ones(2), 'b': jnp.ones(2)}, {'a': jnp.ones(2), 'x': jnp.ones(2)})
    msgs.append(str(e.value))
    path = tmp_path / 'p.safetensors'
    ptp.save(path, {'a': np.ones(2, np.float32), 'x': np.ones(2, np.float32)})
    with pytest.raises(ptp.StructureError) as e:
        ptp.load(path, like={'a': jnp.ones(2), 'b': jnp.ones(2)})
    msgs.append(str(e.value))
    _, report = ptp.load_into(
        {'a': np.ones(2, np.float32), 'x': np.ones(2, np.float32)},
        like={'a': jnp.ones(2), 'b': jnp.ones(2)},
        strict=False,
    )
    msgs.append('; '.join(report.problems()))
    with pytest.raises(ptp.StructureError) as e:
        ptp.unflatten({'a': 1.0, 'x': 2.0}, like={'a': 0.0, 'b': 0.0})
    msgs.append(str(e.value))
    for msg, where in zip(msgs, ['', '', ' in source', '']):
        assert f"missing 1 path{where}: 'b'" in msg, msg
        assert f"unexpected 1 path{where}: 'x'" in msg, msg


def test_path_differences_truncates_and_quotes_as_quote_list():
    many = [f'p{i}' for i in range(14)]
    (part,) = path_differences(many, [])
    assert part == "missing 14 paths: 'p0', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', " + (
        "'p8', 'p9', 'p10', 'p11', ... (2 more)"
    )
    assert path_differences([], []) == []


def test_lists_are_quoted_one_way():
    with pytest.raises(KeyError, match="the statistics are 'mean', 'std', 'min'"):
        ptp.stats({'w': jnp.ones(2)})['nope']


def test_dtype_and_shape_are_spelled_one_way():
    """describe, Row.type and the Ties error all write ``float32[2,3]``."""
    x = jnp.ones((2, 3))
    assert ptp.describe(x) == 'float32[2,3]'
    assert ptp.summary({'w': x}).rows[0].type == 'float32[2,3]'
    with pytest.raises(
        ptp.StructureError, match=r'float32\[3,2\] but the alias holds float32\[2,3\]'
    ):
        ptp.untie({'a': x, 'b': x}, ptp.Ties({'b': ('a', ptp.transpose)}))


def test_did_you_mean_suggests_only_a_close_name():
    """after_flatten's unknown module goes through ``did_you_mean``: a close name
    is suggested, a far one is not (a hand-built hint guessed anyway)."""
    t = {'params': {'Dense_0': {'kernel': np.ones((2, 3), np.float32)}}}
    with pytest.raises(ptp.PathError, match="Did you mean 'params/Dense_0/kernel'"):
        ptp.to_torch_state_dict(t, after_flatten={'params/Dense_1': (1, 2, 1)})
    with pytest.raises(ptp.PathError) as e:
        ptp.to_torch_state_dict(t, after_flatten={'qqq': (1, 2, 1)})
    assert str(e.value) == "after_flatten: no Dense kernel at 'qqq/kernel'."


def test_dead_units_message_is_built_without_missing_ok():
    with pytest.raises(ptp.PathError) as e:
        ptp.dead_units({'w': jnp.ones((2, 2))}, 'nope')
    assert str(e.value) == "pattern 'nope' matches none of the 1 paths. Nearest paths: 'w'."


def test_no_message_is_edited_after_it_is_built():
    """No ``except ... as e`` handler rewrites ``str(e)``: a message is built from
    plain data, by the code that knows what to say."""
    bad = []
    for f in sorted(ROOT.rglob('*.py')):
        for handler in ast.walk(ast.parse(f.read_text())):
            if not isinstance(handler, ast.ExceptHandler) or handler.name is None:
                continue
            for node in ast.walk(handler):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {'replace', 'split', 'partition', 'removesuffix'}
                    and isinstance(node.func.value, ast.Call)
                    and getattr(node.func.value.func, 'id', None) == 'str'
                    and any(getattr(a, 'id', None) == handler.name for a in node.func.value.args)
                ):
                    bad.append(f'{f.relative_to(ROOT)}:{node.lineno}')
    assert bad == []
