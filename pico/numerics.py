"""CPU numerics that do not depend on which x86-64 CPU runs them (``training.numerics: portable``).

On CPU, PyTorch and MKL pick kernels by the instruction sets the processor has: ATen's vectorised
kernels use the widest registers available (AVX-512 where present, else AVX2), and MKL's GEMM picks
a code path per CPU. A different vector width sums in a different order, so two machines give
different bits from the first reduction on, and training, being chaotic, turns that into different
metrics (benchmarks/numerics.py measures which settings matter). ``portable`` pins both to the AVX2
code paths, which every x86-64 CPU of the last decade runs the same way, through the environment
variables the libraries read when they load — so it must run before ``torch`` is imported:
``pico.cli`` calls ``apply`` right after reading params. Elsewhere (ARM, GPU math) it changes
nothing: CUDA kernels do not depend on the host CPU.

``describe`` reports what is in effect; it goes into the run's machine record (``metrics/run_info.json``,
not hashed by DVC) so ``pico reproduce`` can say why two runs differ.
"""

from __future__ import annotations

import os
import platform
import sys

# MKL_CBWR: MKL's "conditional numerical reproducibility" branch; AVX2 pins the GEMM kernels.
# ATEN_CPU_CAPABILITY caps ATen's kernels at AVX2 (ATen does not check that the CPU has what it is
# told to use, hence the AVX2 check in apply); oneDNN (bf16 and some fp32 paths) likewise.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def apply(mode: str) -> list[str]:
    """Set the portable environment for this process and its children; returns what was set.
    Too late once torch is loaded (then the libraries already chose), which is said."""
    if mode != "portable" or not is_x86():
        return []
    if (
        "avx2" not in _cpuinfo("flags", "avx2").split()
    ):  # no /proc (macOS): every x86-64 Mac has AVX2  # ATen would run AVX2 instructions it was told to use: SIGILL
        print(
            "note: this CPU has no AVX2, so training.numerics=portable cannot pin the AVX2 code paths; "
            "its results may differ from other machines'",
            file=sys.stderr,
        )
        return []
    changed = [f"{k}={v}" for k, v in PORTABLE_ENV.items() if os.environ.get(k) != v]
    if changed and "torch" in sys.modules:
        print(
            "note: training.numerics=portable takes effect only in a fresh process (torch is already "
            f"loaded here); not set: {', '.join(changed)}",
            file=sys.stderr,
        )
        return []
    os.environ.update(PORTABLE_ENV)
    return changed


def describe() -> dict[str, str | int | None]:
    """The numerics this process runs with (call after torch is imported)."""
    import torch

    return {
        "cpu": _cpuinfo("model name", platform.processor() or platform.machine()),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpuinfo(field: str, default: str) -> str:
    """The first ``field`` line of /proc/cpuinfo, or ``default`` where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
