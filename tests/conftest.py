"""Test configuration: hypothesis explores new examples locally but replays a fixed set in CI.

Data that lives outside the repository and the installed packages is requested through a fixture
that skips with the install hint when it is absent (a fresh machine), e.g. ``fashion_mnist_root``;
``.ci/run`` installs it so that CI runs those tests.
"""

from __future__ import annotations

import os
from pathlib import Path

# Processes that tests start (torchrun workers, a killed-and-resumed run, the CLI) test run
# lifecycles, not kernels: they run the fused kernels' eager code instead of compiling them anew
# in every process (same values, tests/test_fusion.py). This process keeps the default.
_FUSE_HERE = os.environ.get("WAGEUBN_FUSE", "1")
os.environ["WAGEUBN_FUSE"] = "0"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from wageubn.quant.fusion import set_fusion  # noqa: E402

set_fusion(_FUSE_HERE.strip().lower() not in ("0", "false", "no", "off"))

# `make test` runs the suite on pytest-xdist workers (one per core): each worker then computes on
# its share of the cores instead of all of them fighting over every core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch  # noqa: E402

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

pytest_plugins = ("pytester",)  # tests that run a test of this suite on a simulated machine

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The apt package that .ci/run installs; the skip reason of every test that needs it.
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


@pytest.fixture
def fashion_mnist_root() -> Path:
    """Debian's Fashion-MNIST directory (``wageubn.data.fashion_mnist.DEFAULT_ROOT``, read when the
    test runs); the test skips with the install hint when it is not there."""
    from wageubn.data import fashion_mnist

    root = Path(fashion_mnist.DEFAULT_ROOT)
    if not root.is_dir():
        pytest.skip(f"{root} not found: apt-get install {FASHION_MNIST_PACKAGE}")
    return root
