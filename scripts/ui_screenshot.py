"""Screenshots of the local UI after a real run, for the README (docs/ui-*.png).

Starts `python -m app ui` on embedded defaults in a temporary folder (embedded PostgreSQL, the
built-in simulator), launches today's partition of `crm_daily` through the GraphQL API, waits
for it, then takes headless-Chromium screenshots of the asset graph and of one audit's checks.

    .venv/bin/python scripts/ui_screenshot.py [--out docs] [--port 3123]

Needs Debian's `chromium` (`apt-get install -y chromium`).
"""

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zoneinfo
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPOS = """{ repositoriesOrError { ... on RepositoryConnection {
  nodes { name location { name } pipelines { name } } } } }"""
LAUNCH = """mutation L($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
STATUS = """query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def graphql(base: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(  # noqa: S310 - loopback only
        f"{base}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())["data"]


def wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except OSError:
            pass
        time.sleep(2)
    raise SystemExit(f"timed out waiting for {what}")


def location_of(base: str, job: str) -> tuple[str, str] | None:
    for node in graphql(base, REPOS)["repositoriesOrError"].get("nodes") or []:
        if job in {p["name"] for p in node["pipelines"]}:
            return node["location"]["name"], node["name"]
    return None


def run_today(base: str) -> str:
    location, repo = wait("the code location", lambda: location_of(base, "crm_daily"), 180)
    today = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Kolkata")).date().isoformat()
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": repo,
            "jobName": "crm_daily",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": today}]},
    }
    result = graphql(base, LAUNCH, {"p": params})["launchRun"]
    run_id = str(result["run"]["runId"])
    status = wait(
        "the run",
        lambda: (
            (s := graphql(base, STATUS, {"id": run_id})["runOrError"]["status"])
            in ("SUCCESS", "FAILURE", "CANCELED")
            and s
        ),
        600,
    )
    print(f"run {run_id}: {status}", file=sys.stderr)
    return location


def shoot(url: str, out: Path, size: str = "1600,1000") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    subprocess.run(  # noqa: S603 - fixed argv
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size}",
            "--virtual-time-budget=20000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {out}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--port", type=int, default=3123)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crm-ui-shot-"))
    work.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TMS_", "DATABASE_URL", "DAGSTER_HOME", "DATA_DIR"))
    }
    env.update({"DATA_DIR": str(work / "data"), "GO_LIVE_DATE": "2026-11-01"})
    ui = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "app", "ui", "--port", str(args.port)],
        cwd=work,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait("the webserver", lambda: urllib.request.urlopen(f"{base}/server_info"), 180)  # noqa: S310
        location = run_today(base)
        graphql(base, "mutation { setNuxSeen }")  # the first-visit newsletter dialog
        time.sleep(5)
        shoot(
            f"{base}/locations/{location}/asset-groups/missed_leads/lineage",
            args.out / "ui-asset-graph.png",
        )
        shoot(
            f"{base}/assets/missed_leads/audit?view=checks&checkDetail=audit_passed",
            args.out / "ui-audit-check.png",
            size="1600,1300",
        )
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
