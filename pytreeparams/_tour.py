"""The tour of parameter management: the one source of the notebook and the demo.

``notebooks/parameter_management.ipynb`` is these cells (``tools/build_notebook.py``
writes it; ``tests/test_notebook.py`` checks that the committed notebook holds
exactly them), and ``python -m pytreeparams demo`` runs the same code cells in
the terminal (``_demo.py``). It follows the parameter-management chapter of
"Dive into Deep Learning" with JAX, Flax and pytreeparams.
"""

from __future__ import annotations

__all__ = ['CELLS']


def md(text: str) -> tuple[str, str]:
    """A markdown cell."""
    return ('markdown', text)


def code(text: str) -> tuple[str, str]:
    """A code cell: it runs in the notebook's kernel and in the demo alike."""
    return ('code', text)


CELLS: tuple[tuple[str, str], ...] = (
    md(
        """# Parameter management with pytreeparams

This notebook follows the *parameter management* chapter of [Dive into Deep Learning](https://d2l.ai/chapter_builders-guide/parameters.html) (section 6.2) with JAX, Flax and **pytreeparams**:

1. accessing parameters (one layer, one value, gradients, everything at once),
2. nested blocks,
3. initialization (built-in, custom, setting values directly),
4. tied parameters,
5. the exercises (nested access, training with a shared layer while watching every layer, why sharing helps),
6. saving the parameters and running the same model in PyTorch.

In JAX the parameters are a *pytree* (nested dicts) kept apart from the model, so every operation here is a pure function on that tree: nothing is modified in place."""
    ),
    code(
        """import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pytreeparams as ptp

STEPS = 300  # training steps in section 5 (`pytreeparams demo --steps N` sets them)
OUT = tempfile.mkdtemp()  # where the plot and the saved files go (`demo --out DIR`)"""
    ),
    md(
        """## 1. Parameter access

The chapter's MLP: `Dense(8)`, ReLU, `Dense(1)` on a batch of 2 examples with 4 features. `nn.Sequential` names its layers `layers_0`, `layers_1`, ... by position, so the two dense layers are `layers_0` and `layers_2`."""
    ),
    code(
        """net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
X = jax.random.uniform(jax.random.key(1), (2, 4))
params = net.init(jax.random.key(0), X)
net.apply(params, X).shape"""
    ),
    md("""Every parameter has a path. The second dense layer's parameters:"""),
    code("""ptp.get(params, 'params/layers_2')"""),
    md("""One value: the bias of that layer, and its type and data."""),
    code(
        """bias = ptp.get(params, 'params/layers_2/bias')
ptp.describe(bias), bias"""
    ),
    md(
        """JAX keeps gradients apart from parameters: `jax.grad` returns a tree of the same shape, addressed by the same paths."""
    ),
    code(
        """grads = jax.grad(lambda p: jnp.sum(net.apply(p, X)))(params)
ptp.get(grads, 'params/layers_2/bias')"""
    ),
    md(
        """All parameters at once: paths with shapes, then the summary with statistics (49 parameters)."""
    ),
    code(
        """for path, leaf in ptp.flatten(params).items():
    print(f'{path:<24} {ptp.describe(leaf)}')"""
    ),
    code(
        """summary = ptp.summary(params)
assert summary.totals.size == 49
summary"""
    ),
    md("""A wrong path gets an error that says what exists there:"""),
    code(
        """try:
    ptp.get(params, 'params/layers_1/bias')
except ptp.PathError as e:
    print(e)"""
    ),
    md(
        """## 2. Nested blocks

A block factory nested as in the chapter: `block2` holds four `block1`s, and the network is `block2` followed by an output layer. The summary groups parameters by module with `depth`."""
    ),
    code(
        """def block1():
    return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(4), nn.relu])


def block2():
    return nn.Sequential([block1() for _ in range(4)])


rgnet = nn.Sequential([block2(), nn.Dense(1)])
rg_params = rgnet.init(jax.random.key(0), X)
ptp.summary(rg_params, depth=3)"""
    ),
    md(
        """Given the module and its input, the summary shows each call as `nn.tabulate` does (module, input and output shapes, read from flax's own tabulate machinery) beside the statistics of the parameters that call owns; `depth` folds deeper calls into their parent."""
    ),
    code("""ptp.summary(rgnet, X, variables=rg_params, depth=2)"""),
    md(
        """Reaching one bias deep inside: the first dense layer of the second block of the first layer."""
    ),
    code("""ptp.get(rg_params, 'params/layers_0/layers_1/layers_0/bias')"""),
    md(
        """## 3. Parameter initialization

Rules are `(pattern, initializer)` pairs, with initializers from `jax.nn.initializers` (signature `(key, shape, dtype)`); the first matching rule wins. Each leaf's key is derived from its path, so results do not depend on what else is in the tree."""
    ),
    code(
        """init = jax.nn.initializers
key = jax.random.key(42)
normal = ptp.reinit(params, key, [('**/kernel', init.normal(0.01)), ('**/bias', init.zeros)])
ptp.get(normal, 'params/layers_0/kernel')[0], ptp.get(normal, 'params/layers_0/bias')[0]"""
    ),
    code(
        """constant = ptp.reinit(params, key, {'**/kernel': init.constant(1.0), '**/bias': init.zeros})
ptp.get(constant, 'params/layers_0/kernel')[0], ptp.get(constant, 'params/layers_0/bias')[0]"""
    ),
    md("""Xavier on the first layer, the constant 42 on the second:"""),
    code(
        """mixed = ptp.reinit(
    params,
    key,
    [
        ('params/layers_0/kernel', init.xavier_uniform()),
        ('params/layers_2/kernel', init.constant(42.0)),
    ],
)
ptp.get(mixed, 'params/layers_0/kernel')[0], ptp.get(mixed, 'params/layers_2/kernel').ravel()"""
    ),
    md(
        """A custom initializer is a plain function. The chapter's distribution: $U(5, 10)$ with probability 1/4, 0 with probability 1/2, $U(-10, -5)$ with probability 1/4."""
    ),
    code(
        """def chapter_init(key, shape, dtype=jnp.float32):
    w = jax.random.uniform(key, shape, dtype, -10.0, 10.0)
    return w * (jnp.abs(w) >= 5)


custom = ptp.reinit(params, key, {'**/kernel': chapter_init})
ptp.get(custom, 'params/layers_0/kernel')[:2]"""
    ),
    code(
        """import matplotlib.pyplot as plt

sample = np.asarray(chapter_init(jax.random.key(0), (100_000,)))
zero, pos, neg = np.mean(sample == 0), np.mean(sample > 0), np.mean(sample < 0)
print(f'zeros {zero:.3f}, positive {pos:.3f}, negative {neg:.3f}')
plt.figure(figsize=(6, 2.5))
plt.hist(sample, bins=80)
plt.title('the custom initializer')
plt.show()"""
    ),
    md(
        """Setting values directly: add 1 to the kernel, then set one entry to 42. The original tree is not changed."""
    ),
    code(
        """plus = ptp.update(custom, 'params/layers_0/kernel', lambda w: w + 1)
set42 = ptp.update(plus, 'params/layers_0/kernel', lambda w: w.at[0, 0].set(42.0))
print(ptp.get(set42, 'params/layers_0/kernel')[0])
print(ptp.get(custom, 'params/layers_0/kernel')[0])"""
    ),
    md(
        """Fine-tuning style loading: copy a trained tree into a model with a new head, keeping the new head as initialized; the report says what was loaded and what did not fit."""
    ),
    code(
        """new_net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
target = new_net.init(jax.random.key(5), X)
try:
    ptp.load_into(params, like=target)
except ptp.StructureError as e:
    print(e)
loaded, report = ptp.load_into(params, like=target, skip='params/layers_2/**')
print(report)"""
    ),
    md(
        """## 4. Tied parameters

In Flax, a module instance called twice is one set of parameters stored once: the chapter's network has three stored dense layers, and `ptp.shared_modules` reports which module is reused and where."""
    ),
    code(
        """shared = nn.Dense(8)
tied_net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
tied_params = tied_net.init(jax.random.key(0), X)
assert len(tied_params['params']) == 3
print(list(tied_params['params']))
ptp.shared_modules(tied_net, X)"""
    ),
    md(
        """Two *separately defined* layers can be tied too: `ptp.Ties` declares `alias -> source`; `ptp.untie` keeps the source only (the compact tree the optimizer sees) and `ptp.tie` rebuilds the aliases inside the loss, so the gradient of the source is the sum over its uses."""
    ),
    code(
        """class Twin(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8, name='layers_0')(x))
        x = nn.relu(nn.Dense(8, name='layers_2')(x))
        x = nn.relu(nn.Dense(8, name='layers_4')(x))
        return nn.Dense(1, name='layers_6')(x)


twin = Twin()
ties = ptp.Ties({'params/layers_4': 'params/layers_2'})
full = twin.init(jax.random.key(0), X)
full = ptp.set(full, 'params/layers_4', ptp.get(full, 'params/layers_2'))
compact = ptp.untie(full, ties)
print(list(compact['params']), ptp.count(full), '->', ptp.count(compact))"""
    ),
    md("""Changing the source changes both uses:"""),
    code(
        """changed = ptp.tie(ptp.update(compact, 'params/layers_2/bias', lambda b: b + 1), ties)
print(ptp.get(changed, 'params/layers_2/bias')[:3], ptp.get(changed, 'params/layers_4/bias')[:3])"""
    ),
    md("""The gradient of the shared layer is the sum of the gradients of its two uses:"""),
    code(
        """def loss_fn(p, x):
    return jnp.sum(twin.apply(p, x) ** 2)


g_compact = jax.grad(lambda c: loss_fn(ptp.tie(c, ties), X))(compact)
g_full = jax.grad(loss_fn)(ptp.tie(compact, ties), X)
uses = ptp.tied_grads(g_full, ties)['params/layers_2/kernel']
total = uses['params/layers_2/kernel'] + uses['params/layers_4/kernel']
np.testing.assert_allclose(total, g_compact['params']['layers_2']['kernel'], rtol=1e-6)
float(jnp.abs(total - g_compact['params']['layers_2']['kernel']).max())"""
    ),
    md(
        """An embedding tied to the output projection through a transpose, as in GPT-2: the head is rebuilt as `embedding.T`."""
    ),
    code(
        """vocab, d = 100, 16
emb = jax.random.normal(jax.random.key(3), (vocab, d))
lm = {'params': {'wte': {'embedding': emb}, 'lm_head': {'kernel': emb.T}}}
lm_ties = ptp.Ties({'params/lm_head/kernel': ('params/wte/embedding', ptp.transpose)})
lm_compact = ptp.untie(lm, lm_ties)
ptp.summary(lm, ties=lm_ties, stats=False)"""
    ),
    md(
        """## 5. Exercises

**Access the parameters of a nested MLP.** Select by pattern: every kernel of the nested network, and a mask that `optax` accepts directly (here: weight decay on kernels only)."""
    ),
    code(
        """kernels = ptp.select(rg_params, '**/kernel')
print(len(kernels), list(kernels)[:3])
mask = ptp.mask(rg_params, '**/kernel')
tx = optax.adamw(1e-3, weight_decay=1e-4, mask=mask)
opt_state = tx.init(rg_params)"""
    ),
    md(
        """**Train an MLP with a shared layer and watch each layer.** `ptp.grad_stats` runs inside the jitted step and returns one small array; `ptp.History` keeps them on device and fetches in bulk."""
    ),
    code(
        """xs = jax.random.normal(jax.random.key(7), (256, 4))
ys = jnp.sin(xs.sum(axis=1, keepdims=True))
tx = optax.adam(1e-2)
opt = tx.init(compact)


@jax.jit
def step(compact, opt):
    def loss_of(c):
        return jnp.mean((twin.apply(ptp.tie(c, ties), xs) - ys) ** 2)

    loss, g = jax.value_and_grad(loss_of)(compact)
    updates, opt = tx.update(g, opt, compact)
    stats = ptp.grad_stats(g, compact, updates, depth=2)
    return optax.apply_updates(compact, updates), opt, loss, stats


history = ptp.History()
trained = compact
for i in range(STEPS):
    trained, opt, loss, stats = step(trained, opt)
    history.append(i, stats)
print(f'final loss {float(loss):.4f}')
fig = history.plot()
fig.savefig(os.path.join(OUT, 'grad_history.png'))
fig"""
    ),
    md(
        """**Why sharing helps.** The shared layer is stored once: fewer parameters and less memory, for the model and for the optimizer state (Adam keeps two more copies of every parameter)."""
    ),
    code(
        """untied = ptp.tie(trained, ties)
for name, tree in [('untied', untied), ('shared', trained)]:
    n, b = ptp.count(tree), ptp.nbytes(tree)
    print(f'{name:>7}: {n} parameters, {b} bytes, Adam state {ptp.nbytes(tx.init(tree))} bytes')"""
    ),
    md(
        """## 6. Saving, and running the same MLP in PyTorch

`ptp.save` writes a safetensors file atomically; `ptp.to_torch_state_dict` converts Flax's layout (kernels as `(in, out)`, `layers_0`) to PyTorch's (`Linear` weights as `(out, in)`, `0.weight`)."""
    ),
    code(
        """import torch
from safetensors.torch import load_file

path = os.path.join(OUT, 'mlp.safetensors')
ptp.save(path, ptp.to_torch_state_dict(params))
state_dict = load_file(path)
{k: tuple(v.shape) for k, v in state_dict.items()}"""
    ),
    code(
        """torch_net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
torch_net.load_state_dict(state_dict)
with torch.no_grad():
    torch_out = torch_net(torch.from_numpy(np.array(X))).numpy()
flax_out = np.asarray(net.apply(params, X))
print(torch_out.ravel(), flax_out.ravel())
assert np.abs(torch_out - flax_out).max() <= 1e-5"""
    ),
    md(
        """And back: the PyTorch weights loaded into the Flax model, with a report of anything unmatched."""
    ),
    code(
        """back, report = ptp.from_torch_state_dict(torch_net.state_dict(), like=params)
print(report)
np.testing.assert_allclose(net.apply(back, X), flax_out, atol=1e-6)"""
    ),
)
