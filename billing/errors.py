"""Errors of the billing rules: a catalog that breaks billing-v1.md §7, a PAYG hour without a rate."""


class CatalogError(ValueError):
    """A catalog member that breaks the §7 shape; ``path`` names it (``licenses[2].capacity[0].bundle``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class PricingError(ValueError):
    """A PAYG hour whose capacity has no `rates.hourly` entry (billing-v1.md §4): no invoice at all."""

    def __init__(self, license_id: str, capacity: object, message: str) -> None:
        super().__init__(f"license {license_id}: capacity {capacity!r}: {message}")
        self.license = license_id
        self.capacity = capacity
        self.message = message
