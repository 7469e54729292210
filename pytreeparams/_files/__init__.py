"""Files: which format a path names (``_formats``), atomic writes (``_atomic``), the
containers every format records (``_structure``), the formats (``_safetensors`` with
``.npz``, ``_msgpack``, ``_orbax``) and ``save``/``load`` over them (``_io``). The rest
of the package enters through the names below."""

from ._io import load as load
from ._io import read_state_dict as read_state_dict
from ._io import save as save

__all__ = ['load', 'read_state_dict', 'save']
