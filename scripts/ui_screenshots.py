"""Screenshots of the UI plugin's fleet and timeline pages from a running Airflow.

The docs' pictures (docs/img/fleet.png, docs/img/timeline.png) come from the e2e scenario,
which shoots the fleet while bair lends its GPUs to rise:

    SKYSHARE_UI_SHOTS=docs/img ./dev test tests/e2e/test_scenario_airflow.py -k through_real_airflow

This script shoots the same pages from any Airflow with the plugin, e.g. the demo's after
`./dev demo` (which leaves it running; the fleet is then at rest):

    python scripts/ui_screenshots.py --out /tmp/shots [--url http://localhost:8080]
        [--dag rise_user --task romil-train --run-id RUN] [--user NAME --password PASSWORD]

Without --run-id it takes the DAG's latest run; without --user it expects an Airflow that
signs everyone in (`simple_auth_manager_all_admins`, as the demo's does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.browser import Browser, check_png

LATEST_RUN = ("fetch('/api/v2/dags/{dag}/dagRuns?order_by=-run_after&limit=1')"
              ".then(r => r.json()).then(j => j.dag_runs.length ? j.dag_runs[0].dag_run_id : '')")


def shoot(browser: Browser, url: str, dag: str, task: str, run_id: str, out: Path) -> list[Path]:
    """fleet.png and timeline.png in `out`, each page checked to have drawn its chart."""
    fleet = browser.open(f"{url}/skyshare/?refresh=0")
    assert fleet.status == 200 and 'class="skyshare-fleet"' in fleet.dom, fleet.status
    shots = [browser.screenshot(out / "fleet.png")]
    query = urlencode({"dag_id": dag, "run_id": run_id, "task_id": task, "refresh": 0})
    timeline = browser.open(f"{url}/skyshare/timeline?{query}")
    assert timeline.status == 200 and 'class="skyshare-timeline"' in timeline.dom, (
        f"{timeline.status}: no attempts of {dag}/{task} in run {run_id}")
    shots.append(browser.screenshot(out / "timeline.png"))
    for shot in shots:
        check_png(shot, browser.width, 200)
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--dag", default="rise_user")
    parser.add_argument("--task", default="romil-train")
    parser.add_argument("--run-id", default="")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="ui-shots-") as tmp, \
            Browser(Path(tmp), width=args.width) as browser:
        browser.open(f"{url}/skyshare/?refresh=0")  # a page of that Airflow, to log in from
        if args.user and browser.login(args.user, args.password) != 201:
            print(f"{url}: cannot log in as {args.user}", file=sys.stderr)
            return 2
        run_id = args.run_id or browser.evaluate(LATEST_RUN.format(dag=quote(args.dag)),
                                                 await_promise=True)
        if not run_id:
            print(f"{url}: DAG {args.dag} has no run; give --run-id", file=sys.stderr)
            return 2
        for shot in shoot(browser, url, args.dag, args.task, run_id, args.out):
            print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
