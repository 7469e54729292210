"""pytreeparams: reach, read, share and watch the parameters of JAX models."""

from ._errors import FormatError as FormatError
from ._errors import PathError as PathError
from ._errors import StructureError as StructureError
from ._paths import combine as combine
from ._paths import describe as describe
from ._paths import flatten as flatten
from ._paths import get as get
from ._paths import labels as labels
from ._paths import map_with_path as map_with_path
from ._paths import mask as mask
from ._paths import partition as partition
from ._paths import paths as paths
from ._paths import select as select
from ._paths import set as set  # noqa: A004
from ._paths import unflatten as unflatten
from ._paths import update as update

__version__ = '0.1.0'

__all__ = [
    'FormatError',
    'PathError',
    'StructureError',
    'combine',
    'describe',
    'flatten',
    'get',
    'labels',
    'map_with_path',
    'mask',
    'partition',
    'paths',
    'select',
    'set',
    'unflatten',
    'update',
]
