"""Facts about the submitting host, found without importing torch (the dry run must stay fast)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from launcher.cpu import native_bf16
from launcher.gpus import local_gpu_count  # NVIDIA or AMD (ROCm)
from launcher.plan import HostFacts


# TPU chips are PCI devices of Google's vendor id (as torch_xla counts them); v2/v3, v4, v5e, v5p, v6e.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027", "0x005e", "0x0063", "0x0062", "0x006f"}


def local_tpu_chips(pci_root: Path = Path("/sys/bus/pci/devices")) -> int:
    chips = 0
    for vendor in pci_root.glob("*/vendor"):
        try:
            if vendor.read_text().strip() == GOOGLE_PCI_VENDOR:
                chips += (vendor.parent / "device").read_text().strip() in TPU_PCI_DEVICES
        except OSError:
            continue
    return chips


def host_facts() -> HostFacts:
    # find_spec, not import: torch_xla takes seconds to import and the dry run must stay fast
    has_xla = importlib.util.find_spec("torch_xla") is not None
    return HostFacts(gpus=local_gpu_count(), python=sys.executable, cpu_bf16=native_bf16(), torch_xla=has_xla,
                     tpu_chips=local_tpu_chips())
