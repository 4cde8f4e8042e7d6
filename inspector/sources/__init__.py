"""Item sources: each runs in its own thread and hands `Item`s to the pipeline."""

from .base import Item, Source  # noqa: F401
from .camera import CameraSourceThread  # noqa: F401
from .folder import FolderSourceThread  # noqa: F401
from .traffic import TrafficSourceThread  # noqa: F401
