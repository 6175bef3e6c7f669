"""Platform adapters: one module per platform behind the small interface in adapters.base."""
