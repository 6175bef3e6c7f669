"""Who may do what: the one role -> permission table of the bearer-token API and the web pages."""

# The vendor role is the one without a provider; the appliance role reads entitlements only (the
# token a TR7 appliance is configured with: a viewer token there read every customer's prices)
ROLES = ("admin", "viewer", "auditor", "appliance", "vendor")

# Permissions: what a route needs, never a role name, so a role changes in one row below.
USAGE = "usage"  # hours, instances, agents, alerts, customers, licenses (no price)
ENTITLEMENTS = "entitlements"  # GET /v1/entitlements/{instance}: is this instance entitled now
PAGES = "pages"  # the web pages of its provider (they show amounts; the vendor has its own view)
INVOICES = "invoices"  # invoices, prices and amounts
ACCOUNTS = "accounts"  # a customer's account: payment state, reminders, billing e-mail
LOG = "log"  # transparency log: signed checkpoints, inclusion and consistency proofs
AUDIT = "audit"  # audit page, bundle export and verification (bundles carry the invoice)
PAYMENTS = "payments"  # record a customer's payment failed / paid
PLANNER = "planner"  # the price planner page
ALL_PROVIDERS = "all-providers"  # the vendor's overview page of every provider
METRICS = "metrics"  # GET /metrics for Prometheus: counts and times, no money (its provider's, or all)

PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({USAGE, ENTITLEMENTS, PAGES, INVOICES, ACCOUNTS, LOG, AUDIT, PAYMENTS, PLANNER,
                        METRICS}),
    "viewer": frozenset({USAGE, ENTITLEMENTS, PAGES, INVOICES, ACCOUNTS, PLANNER}),
    "auditor": frozenset({USAGE, ENTITLEMENTS, PAGES, INVOICES, ACCOUNTS, LOG, AUDIT}),
    "appliance": frozenset({ENTITLEMENTS}),
    # hours and licenses of every provider, never a price or an amount (so no AUDIT: bundles
    # hold invoices) nor a provider's dealings with its customers (ACCOUNTS: payment state and
    # billing e-mail); the log only tells sizes and hashes
    "vendor": frozenset({USAGE, ENTITLEMENTS, LOG, ALL_PROVIDERS, METRICS}),
}

# Every route that takes a bearer token (readapi.ScopeDep), by (method, path template). A route
# missing here is refused to every role, and tests/collector/test_roles.py fails on it.
API_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/providers"): USAGE,
    ("GET", "/v1/providers/{provider}/customers"): USAGE,
    ("GET", "/v1/providers/{provider}/licenses"): USAGE,
    ("GET", "/v1/providers/{provider}/instances"): USAGE,
    ("GET", "/v1/providers/{provider}/agents"): USAGE,
    ("GET", "/v1/providers/{provider}/alerts"): USAGE,
    ("GET", "/v1/providers/{provider}/customers/{customer}/account"): ACCOUNTS,
    ("GET", "/v1/entitlements/{instance}"): ENTITLEMENTS,
    ("GET", "/v1/providers/{provider}/invoices"): INVOICES,
    ("GET", "/v1/providers/{provider}/invoices/{month}"): INVOICES,
    ("GET", "/v1/log/key"): LOG,
    ("GET", "/v1/log/{provider}/{month}/checkpoint"): LOG,
    ("GET", "/v1/log/{provider}/{month}/inclusion"): LOG,
    ("GET", "/v1/log/{provider}/{month}/consistency"): LOG,
    ("POST", "/v1/providers/{provider}/customers/{customer}/payment-failed"): PAYMENTS,
    ("POST", "/v1/providers/{provider}/customers/{customer}/paid"): PAYMENTS,
    ("GET", "/metrics"): METRICS,
}

def allows(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def roles_with(permission: str) -> tuple[str, ...]:
    return tuple(r for r in ROLES if permission in PERMISSIONS[r])


def denial(permission: str) -> str:
    """The 403 detail: which roles would have been let in."""
    return f"{permission} needs the role {' or '.join(roles_with(permission))}"
