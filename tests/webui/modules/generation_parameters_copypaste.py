"""Old name of modules.infotext_utils (A1111 aliases it)."""
import sys

from modules import infotext_utils

sys.modules[__name__] = infotext_utils
