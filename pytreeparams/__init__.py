"""pytreeparams: reach, read, share and watch the parameters of JAX models."""

from ._calls import Call as Call
from ._diff import DiffReport as DiffReport
from ._diff import diff as diff
from ._errors import FormatError as FormatError
from ._errors import NonFiniteError as NonFiniteError
from ._errors import PathError as PathError
from ._errors import StructureError as StructureError
from ._files import load as load
from ._files import read_state_dict as read_state_dict
from ._files import save as save
from ._find_ties import TieGroup as TieGroup
from ._find_ties import find_ties as find_ties
from ._finite import assert_finite as assert_finite
from ._finite import find_nonfinite as find_nonfinite
from ._finite import first_nonfinite_activation as first_nonfinite_activation
from ._flags import LayerFlags as LayerFlags
from ._flags import dead_units as dead_units
from ._flags import flag_layers as flag_layers
from ._flatten import flatten as flatten
from ._flatten import paths as paths
from ._flatten import unflatten as unflatten
from ._grads import GRAD_STAT_NAMES as GRAD_STAT_NAMES
from ._grads import GradStats as GradStats
from ._grads import grad_stats as grad_stats
from ._histogram import log_bins as log_bins
from ._history import History as History
from ._init import path_key as path_key
from ._init import reinit as reinit
from ._inspect import Inspection as Inspection
from ._inspect import inspect as inspect
from ._keys import describe as describe
from ._load import LoadReport as LoadReport
from ._load import load_into as load_into
from ._paths import get as get
from ._paths import set as set
from ._patterns import combine as combine
from ._patterns import labels as labels
from ._patterns import map_with_path as map_with_path
from ._patterns import mask as mask
from ._patterns import partition as partition
from ._patterns import select as select
from ._patterns import update as update
from ._rows import Row as Row
from ._shared import SharedModule as SharedModule
from ._shared import shared_modules as shared_modules
from ._stats import STAT_NAMES as STAT_NAMES
from ._stats import Stats as Stats
from ._stats import stats as stats
from ._summary import Summary as Summary
from ._summary import count as count
from ._summary import nbytes as nbytes
from ._summary import shapes as shapes
from ._summary import summary as summary
from ._torch import TorchLayout as TorchLayout
from ._torch import attention_rules as attention_rules
from ._torch import from_torch_state_dict as from_torch_state_dict
from ._torch import to_torch_state_dict as to_torch_state_dict
from ._tying import Ties as Ties
from ._tying import tie as tie
from ._tying import tied_grads as tied_grads
from ._tying import transpose as transpose
from ._tying import untie as untie
from ._watch import WatchState as WatchState
from ._watch import watch as watch
from ._watch import watched as watched

__version__ = '0.1.0'

# `set` and `inspect` are left out of __all__ so that a star import does not shadow
# the builtin and the standard module; use them as ptp.set and ptp.inspect.
__all__ = [
    'Call',
    'DiffReport',
    'FormatError',
    'GRAD_STAT_NAMES',
    'GradStats',
    'History',
    'Inspection',
    'LayerFlags',
    'LoadReport',
    'NonFiniteError',
    'PathError',
    'Row',
    'STAT_NAMES',
    'SharedModule',
    'Stats',
    'StructureError',
    'Summary',
    'TieGroup',
    'Ties',
    'TorchLayout',
    'WatchState',
    'assert_finite',
    'attention_rules',
    'combine',
    'count',
    'dead_units',
    'describe',
    'diff',
    'find_nonfinite',
    'find_ties',
    'first_nonfinite_activation',
    'flag_layers',
    'flatten',
    'from_torch_state_dict',
    'get',
    'grad_stats',
    'labels',
    'load',
    'load_into',
    'log_bins',
    'map_with_path',
    'mask',
    'nbytes',
    'partition',
    'path_key',
    'paths',
    'read_state_dict',
    'reinit',
    'save',
    'select',
    'shapes',
    'shared_modules',
    'stats',
    'summary',
    'tie',
    'tied_grads',
    'to_torch_state_dict',
    'transpose',
    'unflatten',
    'untie',
    'update',
    'watch',
    'watched',
]
