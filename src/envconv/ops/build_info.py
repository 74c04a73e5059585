"""What a built C++ kernel was built for (read without torch: ``setup.py`` loads this file by path).

A kernel built with the package (``setup.py``) has a ``_C.json`` beside it: the torch version it
was compiled against and, for a ``-march=native`` build, the tag of the CPU it was built on.
:mod:`envconv.ops.cpu` loads it only where both match (another torch's ABI, or a CPU without
the instructions it uses, would crash instead of failing).
"""

import hashlib
import platform
from pathlib import Path

__all__ = ["cpu_tag", "LIBRARY", "INFO"]

#: The library ``setup.py`` builds and its build record, in the ``envconv`` package folder.
LIBRARY, INFO = "_C.so", "_C.json"


def cpu_tag() -> str:
    """A short hash of this CPU's instruction-set flags (a ``-march=native`` build runs only where they match)."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]
