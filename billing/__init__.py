"""Billing rules of billing-v1.md as pure functions: catalog, activity, coverage, pricing, adjustments."""

from billing.activity import Activity
from billing.adjust import adjustment_lines, same_invoice, same_usage, with_adjustments
from billing.catalog import Catalog, load_catalog
from billing.compute import BillingResult, compute, usage_despite_pricing
from billing.errors import CatalogError, PricingError
from billing.recompute import bill

__all__ = [
    "Activity",
    "BillingResult",
    "Catalog",
    "CatalogError",
    "PricingError",
    "adjustment_lines",
    "bill",
    "compute",
    "load_catalog",
    "same_invoice",
    "same_usage",
    "usage_despite_pricing",
    "with_adjustments",
]
