"""Files: which format a path names (``_formats``), atomic writes (``_atomic``), the
containers every format records (``_structure``), the formats (``_safetensors`` with
``.npz``, ``_msgpack``, ``_orbax``) and ``save``/``load`` over them (``_io``). The rest
of the package enters through the names below."""

from ._formats import format_of as format_of
from ._formats import scheme_of as scheme_of
from ._io import file_meta as file_meta
from ._io import load as load
from ._io import read_state_dict as read_state_dict
from ._io import save as save
from ._orbax import abstract_orbax as abstract_orbax
from ._safetensors import own_copy as own_copy
from ._shards import place as place

__all__ = [
    'abstract_orbax',
    'format_of',
    'load',
    'own_copy',
    'place',
    'read_state_dict',
    'save',
    'scheme_of',
]
