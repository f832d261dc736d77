"""GLaMM-GCG (``MBZUAI/GLaMM-GCG``) on transformers' Llama, CLIP and SAM (docs/upstream/glamm.md).

``loading`` reads the released folder, ``sam`` maps GLaMM's SAM onto ``SamModel``, ``prompt``
holds the GCG prompt and its ids, ``model`` runs inference through ``altp.engine``.
"""

from altp.models.errors import CheckpointError
from altp.models.glamm.model import GLaMM, load_glamm

__all__ = ["CheckpointError", "GLaMM", "load_glamm"]
