"""Settings every test shares: the host's own collector configuration is never read."""

import os

# tr7-collector reads the service's environment file (/etc/tr7-collector/collector.env) when no
# --db is given: a machine with the package installed must not point the tests at its database.
os.environ["TR7_COLLECTOR_ENV_FILE"] = os.devnull
