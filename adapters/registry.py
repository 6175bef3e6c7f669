"""Platform name -> adapter class, imported lazily so a missing SDK only matters where it is used."""

import importlib

from adapters.base import Adapter, ConfigError

MODULES = {
    "vmware": "adapters.vmware",
    "kvm": "adapters.kvm",
    "proxmox": "adapters.proxmox",
    "hyperv": "adapters.hyperv",
    "aws": "adapters.aws",
    "azure": "adapters.azure",
}
EXTRAS = {"vmware": "vmware", "kvm": "kvm", "proxmox": "proxmox", "hyperv": "hyperv", "aws": "aws",
          "azure": "azure"}


def adapter_class(platform: str) -> type[Adapter]:
    """Each module exposes ``ADAPTER``: its Adapter subclass (with its ``Config`` model)."""
    if platform not in MODULES:
        raise ConfigError(f"unknown platform {platform!r}; one of {', '.join(sorted(MODULES))}")
    try:
        module = importlib.import_module(MODULES[platform])
    except ImportError as exc:
        raise ConfigError(
            f"platform {platform} needs its SDK: pip install 'tr7-meter[{EXTRAS[platform]}]' ({exc})"
        ) from exc
    cls: type[Adapter] = module.ADAPTER
    return cls
