"""Step retry policy of the portal download, and how a step opts out of it.

Why a step RetryPolicy (and not only Dagster's run retries): the portal is sometimes briefly
unreachable (a deploy on their side, a 5xx burst that outlasts the downloader's own per-request
retries, which then raises `PortalUnavailableError`). Retrying the step inside the same run keeps
the run's hold on its date (the advisory lock belongs to the run's one process, see
`crm_resources.run_lock`), its run folder and its other steps' results; a run retry would be a
new run that has to wait for the lock. The waits grow exponentially (Dagster's
`Backoff.EXPONENTIAL`: delay * (2^n - 1), i.e. 60 s, then 180 s), so a portal that is back within
about four minutes costs one late run instead of a failed day.

Only the portal being unreachable is transient. A wrong password, a bad store scope or a day
on which every bucket failed for its own reasons (a past date with nothing kept) would fail
the same way a minute later; retrying them only delays the exit code and, for the login, adds
failed logins that may lock the franchise account. `without_retry` turns such an error into a
`dg.Failure(allow_retries=False)`, which Dagster never retries, with the error as its cause
(raise it `from exc`), so the CLI summary and the alerts still name the real error.
"""

import dagster as dg

DOWNLOAD_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2,
    delay=60,
    backoff=dg.Backoff.EXPONENTIAL,
)


def without_retry(exc: BaseException) -> dg.Failure:
    """A failure the step's RetryPolicy does not retry; raise it `from exc` to keep the cause."""
    return dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False)
