"""Compile netmon.bpf.c into netmon.bpf.o with clang (stdlib only).

Run by `make` (in-tree, for the editable install) and by setup.py's build_py
(into the wheel), so there is one compiler command. A machine without clang
or the libbpf headers builds no object: netmond then runs without root mode
and says why (see loader.unavailable_reason).

    python netmond/backends/ebpf/build.py [OUTPUT_DIR]
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "netmon.bpf.c")
OBJECT_NAME = "netmon.bpf.o"


def compile_command(source: str, output: str, clang: str = "clang") -> list[str]:
    """clang's arguments: -g keeps the object's own BTF (map definitions need it)."""
    arch_includes = f"/usr/include/{platform.machine()}-linux-gnu"  # asm/types.h on Debian
    return [clang, "-O2", "-g", "-target", "bpf", "-Wall", "-I", arch_includes, "-c", source, "-o", output]


def build(output_dir: str = HERE) -> str | None:
    """Path of the object built in output_dir, or None (with a note on stderr) when it cannot be."""
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if clang is None:
        print("netmon: clang not found: eBPF root mode not built (install clang and libbpf-dev)", file=sys.stderr)
        return None
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        print("netmon: libbpf headers not found: eBPF root mode not built (install libbpf-dev)", file=sys.stderr)
        return None
    os.makedirs(output_dir, exist_ok=True)
    output = os.path.join(output_dir, OBJECT_NAME)
    temporary = output + ".tmp"
    result = subprocess.run(compile_command(SOURCE, temporary, clang), capture_output=True, text=True)
    if result.returncode != 0:
        print(f"netmon: compiling {SOURCE} failed:\n{result.stderr}", file=sys.stderr)
        return None
    os.replace(temporary, output)
    return output


if __name__ == "__main__":
    built = build(sys.argv[1] if len(sys.argv) > 1 else HERE)
    if built:
        print(f"built {built}")
