"""Settings every test shares: the host's own collector configuration is never read."""

import os

# tr7-collector reads the service's environment file (/etc/tr7-collector/collector.env) when no
# --db is given: a machine with the package installed must not point the tests at its database.
os.environ["TR7_COLLECTOR_ENV_FILE"] = os.devnull

# os._exit in pytest's own process ends the run with the code given, often 0, the tests after it
# unrun and CI green (tr7-agent's cli._exit takes that path when a `poll` thread is left alive).
# In pytest's process it raises instead, failing the test that called it; forked children (the
# billing and audit worker pools) still exit for real.
_PYTEST_PID = os.getpid()
_real_exit = os._exit


def _exit_outside_pytest(code: int) -> None:
    if os.getpid() == _PYTEST_PID:
        raise RuntimeError(f"os._exit({code}) called in pytest's own process: it would end the test run")
    _real_exit(code)


os._exit = _exit_outside_pytest
