"""NOT TensorRT: puts the emulator (tests/trt/emulator.py) in place of ``tensorrt``.

Tests put ``tests/trt/site`` first on ``PYTHONPATH``; ``EMULATED_TRT`` picks the version
(8.6.1, 10.3.0 or 11.4.0.106; default 10.3.0). Subprocesses (the build child, the daemon) inherit
both, so they import the same emulator.
"""

import os
import sys

from tests.trt.emulator import make_tensorrt

sys.modules[__name__] = make_tensorrt(os.environ.get("EMULATED_TRT", "10.3.0"))
