"""Make the numpy references and helpers in tests/ importable from every test folder; shared fixtures."""

import os
import sys
from pathlib import Path

# Triton kernels run on CPU tensors through Triton's interpreter (tests/ops). The variable must be
# set before triton is first imported (torch imports it), or triton's own helpers stay compiled-only.
os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from run_helpers import write_idx  # noqa: E402

# pytest-xdist (`make test` runs one worker per core): the workers share the cores instead of each
# starting a thread per core (oversubscribed, the suite ran slower than with one worker).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """A folder with Fashion-MNIST-format IDX files: 128 training and 64 test images, 10 easy classes."""
    root = tmp_path_factory.mktemp("fashion")
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(10, 28, 28, generator=g) * 200
    for split, n in (("train", 128), ("t10k", 64)):
        labels = torch.arange(n) % 10
        images = (patterns[labels] + torch.rand(n, 28, 28, generator=g) * 55).to(torch.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    return root
