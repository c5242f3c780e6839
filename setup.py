"""Build hook: compile the eBPF object (netmond/backends/ebpf/netmon.bpf.c) into the wheel.

Everything else about the package is in pyproject.toml. Without clang or
libbpf-dev the wheel is built without the object and netmond runs without
root mode, saying why.
"""

import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
EBPF_DIR = os.path.join("netmond", "backends", "ebpf")


def _bpf_builder():
    """netmond/backends/ebpf/build.py, loaded by path (the package's dependencies are not installed yet)."""
    spec = importlib.util.spec_from_file_location("netmon_bpf_build", os.path.join(HERE, EBPF_DIR, "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithBpf(build_py):
    def run(self):
        super().run()
        # An editable install imports from the source tree: build the object there.
        target = os.path.join(HERE, EBPF_DIR) if getattr(self, "editable_mode", False) \
            else os.path.join(self.build_lib, EBPF_DIR)
        _bpf_builder().build(target)


setup(cmdclass={"build_py": BuildPyWithBpf})
