"""OMG-LLaVA GCG on our engine, without xtuner, mmdet, mmengine or mmcv (docs/upstream/omg_llava.md)."""

from altp.models.errors import CheckpointError
from altp.models.omg_llava.loading import check_files, load_omg_llava
from altp.models.omg_llava.model import OMGLLaVA

__all__ = ["CheckpointError", "OMGLLaVA", "check_files", "load_omg_llava"]
