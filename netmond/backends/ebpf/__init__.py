"""eBPF root mode (Linux): per-socket owners and UDP byte counters from the kernel.

netmon.bpf.c is compiled to netmon.bpf.o when the package is built (build.py);
loader.py loads it through the system's libbpf.so.1.
"""
