"""Data: reading sources, normalizing row shapes, templates and label masking, batching."""

from .conversation import Conversation
from .encoding import IGNORE_INDEX, ChatEncoder, Encoded
from .formats import ROW_FORMATS, RowFormat, register_format
from .loading import FILE_READERS, Record, read_source

__all__ = [
    "FILE_READERS",
    "IGNORE_INDEX",
    "ROW_FORMATS",
    "ChatEncoder",
    "Conversation",
    "Encoded",
    "Record",
    "RowFormat",
    "read_source",
    "register_format",
]
